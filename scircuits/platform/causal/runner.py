"""The causal study as an ordered list of analyses over shared per-batch machinery.

The examples are encoded and batched once; the blocks below the site and the SAE run once per batch
(``prepare_eval``). The feature statistics and one seeded bootstrap are computed once. Then every
registered analysis runs in order (``registry.study_order``) with a ``StudyContext``; each condition
it scores runs only the blocks above the site. The study-level fields and each analysis's result
make results.json; the per-example scores of the recorded conditions make examples.jsonl.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scircuits.platform.causal.checked_ablation import checked
from scircuits.platform.causal.context import CausalStudyContext
from scircuits.platform.causal.evaluation import prepare_eval
from scircuits.platform.causal.registry import analyses_of, study_order
from scircuits.platform.causal.results import ConditionScore, ExampleRow, ScoreSet
from scircuits.platform.causal.statistics import FEW_EXAMPLES, Bootstrap, selection_split
from scircuits.platform.causal.study import Study, feature_statistics, reconstruction_metrics
from scircuits.platform.common.logs import get_logger
from scircuits.platform.common.progress import progress
from scircuits.platform.config import AblateConfig
from scircuits.platform.contract import jsonvalues
from scircuits.platform.contract.analyses import Analysis, AnalysisResult
from scircuits.platform.contract.benchmarks import Example
from scircuits.platform.contract.errors import ConfigError, ScircuitsError
from scircuits.platform.contract.models import LoadedModel
from scircuits.platform.contract.study import EvaluationSplit, StatisticsInfo, StudyResults
from scircuits.platform.manager.plugin_set import ALLOW_LIST_ENV
from scircuits.platform.model.remote_split import RemoteSplitModel
from scircuits.platform.model.scoring import layout_examples, score_name
from scircuits.platform.model.splice import SplitModel
from scircuits.platform.model.tracing import runs_remotely
from scircuits.platform.train.exclusion import TokenExclusion, exclusion_from_norms, token_exclusion_of

log = get_logger(__name__)


def companion_ablations(config: AblateConfig, plugins: Any) -> dict[str, tuple[Any, Any]]:
    """The ablations swept over top_k beside the main one: ``sweep_also``, or by default those whose
    plugin sets ``companion = True``; the main ablation itself is left out."""
    names = config.sweep_also
    if names is None:
        names = [a.name for a in plugins.ablations if getattr(a, "companion", False) is True]
    main = config.ablation or plugins.ablations.default()
    out = {}
    for name in names:
        if name != main:
            ablation = checked(plugins, name)
            out[name] = (ablation, ablation.parse_options(None))
    return out


@dataclass
class ReferenceExamples:
    """Benchmark examples apart from the evaluation ones (``split``, read by ``load`` only when
    asked) on which the SAE's error is measured afresh when it records none of its own."""

    split: str
    load: Callable[[], list[Example]]


def study_token_exclusion(setting: str, recorded: TokenExclusion | None, data: Any) -> TokenExclusion | None:
    """The tokens the study scores (``--exclude-tokens``): the SAE's recorded rule under ``auto``; for an
    SAE that records none (a published one) under ``auto``, and always under ``outliers``, the outliers
    rule measured on the study's own tokens (its real tokens' |x| and positions at the site); None
    (every token) under ``none``."""
    if setting == "none":
        return None
    if setting == "auto" and recorded is not None:
        return recorded
    norms, positions = [], []
    for eb in data.batches:
        if getattr(eb.cache, "site_output", None) is None:  # nothing traced here (a remote study)
            continue
        real = eb.batch.attention_mask.bool()
        norms.append(eb.cache.site_output.float().norm(dim=-1)[real].cpu().numpy())
        positions.append(eb.batch.position_ids.to(real.device)[real].cpu().numpy())
    if not norms:
        return recorded
    record, _ = exclusion_from_norms(np.concatenate(norms), np.concatenate(positions), "outliers")
    log.info(f"scoring the study's tokens without the outliers measured on them: {record.describe()}")
    return record


def fresh_measurement(
    config: AblateConfig, loaded: LoadedModel, split: Any, study: Study, reference: ReferenceExamples
) -> Callable[[], dict[str, Any] | None]:
    """The SAE's relative error and FVU on ``reference``'s examples, on the tokens its training
    would score (the same definitions as the evaluation tokens' metrics); None without tokens."""

    def measure() -> dict[str, Any] | None:
        examples = reference.load()
        if not examples:
            return None
        # inside the conditions' progress bar: no bar of its own
        data = prepare_eval(
            split, study.sae, loaded.tokenizer, examples, config.batch_size, config.max_length
        )
        metrics = reconstruction_metrics(data, 0, study.token_exclusion)
        if not metrics.get("tokens"):
            return None
        return {
            "split": reference.split,
            "examples": len(examples),
            "tokens": int(metrics["tokens"]),
            "relative_error": float(metrics["relative_error"]),
            "fvu": float(metrics["fvu"]),
        }

    return measure


def check_edit_position(config: AblateConfig, loaded: LoadedModel, examples: list[Example]) -> None:
    """Refuse an --edit-from-position past the longest evaluation example before any model work: no
    position would be edited, and every effect would be a NaN (a mean over no tokens)."""
    if config.edit_from_position <= 0 or not examples:
        return
    sequences, _ = layout_examples(loaded.tokenizer, examples, config.max_length)
    longest = max((len(s.input_ids) for s in sequences), default=0)
    if config.edit_from_position >= longest:
        raise ConfigError(
            f"--edit-from-position {config.edit_from_position} is beyond the longest evaluation example "
            f"({longest} tokens): no position would be edited; give a smaller one (1 spares the sink)"
        )


def prepare_study(
    config: AblateConfig,
    loaded: LoadedModel,
    sae: Any,
    examples: list[Example],
    layer: int,
    plugins: Any,
    sae_info: dict[str, Any] | None = None,
    reference: ReferenceExamples | None = None,
) -> CausalStudyContext:
    """The study's shared state: examples split into selection and evaluation, encoded, batched and
    run once through the lower blocks and the SAE; feature statistics; one seeded bootstrap.
    ``reference``: examples to measure the SAE's error on afresh if the gate asks (``StudyContext.
    fresh_reconstruction_metrics``)."""
    sae.eval()
    ablation = checked(plugins, config.ablation)
    ablation_options = ablation.parse_options(config.ablation_options)
    split = (
        RemoteSplitModel(loaded, layer, config.site)
        if runs_remotely(loaded)
        else SplitModel(loaded, layer, config.site, study_dtype=getattr(torch, config.study_dtype))
    )
    selection, evaluation = selection_split(len(examples), config.selection_fraction, config.seed)
    measured = len(examples) if evaluation is None else len(evaluation)
    check_edit_position(config, loaded, examples if evaluation is None else [examples[i] for i in evaluation])
    if selection is None and config.selection_fraction > 0:
        log.warning(
            f"warning: {len(examples)} example(s) cannot be split: features are ranked and measured on "
            "the same examples (no held-out evaluation); give a larger --limit"
        )
    if measured < FEW_EXAMPLES:
        log.warning(
            f"warning: effects are measured on {measured} example(s): their bootstrap intervals and "
            f"the significance calls mean little below {FEW_EXAMPLES}; give a larger --limit"
        )
    if selection is not None and evaluation is not None:
        # selection first, batched apart: a condition measured on the evaluation split skips the
        # selection batches
        examples = [examples[i] for i in (*selection, *evaluation)]
        selection = np.arange(len(selection))
        evaluation = np.arange(len(selection), len(examples))
    with progress(
        "ablate: lower blocks + SAE", total=len(examples), enabled=config.progress, unit="examples"
    ) as show:
        data = prepare_eval(
            split,
            sae,
            loaded.tokenizer,
            examples,
            config.batch_size,
            config.max_length,
            show,
            parts=None if selection is None else [selection, evaluation],
        )
    # the ablation values, the resample pool and the feature descriptions: evaluation tokens only;
    # the ranking's tie-break (and rank by activation): selection tokens only, as the attribution
    stats, mean_activation, frequency, pool_examples = feature_statistics(
        data, seed=config.seed, first_position=config.edit_from_position, examples=evaluation
    )
    selection_activation = (
        mean_activation
        if selection is None
        else feature_statistics(
            data, n_samples=0, first_position=config.edit_from_position, examples=selection
        )[1]
    )
    study = Study(
        split,
        sae,
        data,
        ablation,
        ablation_options,
        stats,
        config.seed,
        first_position=config.edit_from_position,
    )
    study.pool_examples = pool_examples
    study.token_exclusion = study_token_exclusion(
        config.exclude_tokens, token_exclusion_of((sae_info or {}).get("meta")), data
    )
    study.companions = companion_ablations(config, plugins)
    return CausalStudyContext(
        config=config,
        loaded=loaded,
        study=study,
        layer=layer,
        stats=stats,
        mean_activation=mean_activation,
        frequency=frequency,
        selection_activation=selection_activation,
        bootstrap=Bootstrap(
            data.n_examples if evaluation is None else len(evaluation), config.bootstrap, config.seed
        ),
        selection=selection,
        evaluation=evaluation,
        sae_info=dict(sae_info or {}),
        measure_fresh=None
        if reference is None
        else fresh_measurement(config, loaded, split, study, reference),
    )


def check_json_fields(name: str, owner: str, result: Any) -> None:
    """Every field of an analysis's result can be written to results.json (numbers, text, lists and
    dicts of them; numpy values and NaN are converted), else one line naming the field, before
    anything is written."""
    for field_name, value in result.model_dump(mode="python").items():
        try:
            jsonvalues.dumps(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"analysis {name!r} of plugin {owner}: its result field {field_name!r} cannot be written "
                f"to results.json ({exc}); give it numbers, text, lists or dicts (e.g. tensor.tolist()). "
                "Nothing was written"
            ) from None


def run_study(
    config: AblateConfig,
    loaded: LoadedModel,
    sae: Any,
    examples: list[Example],
    layer: int,
    plugins: Any,
    sae_info: dict[str, Any] | None = None,
    reference: ReferenceExamples | None = None,
) -> tuple[StudyResults, list[ExampleRow]]:
    """Run every registered analysis on ``examples``; results (provenance left empty) and rows.
    ``sae_info``: the checkpoint's metadata (its training metrics feed the reconstruction gate);
    ``reference``: examples for a fresh measurement of its error when it records none."""
    registry = analyses_of(plugins)
    analyses = study_order(registry)
    context = prepare_study(config, loaded, sae, examples, layer, plugins, sae_info, reference)
    study, data = context.study, context.study.data
    selection, evaluation = context.selection, context.evaluation
    total = sum(a.passes(context) for a in analyses)
    done: list[tuple[Analysis, AnalysisResult]] = []
    with progress("ablate: conditions", total=total, enabled=config.progress, unit="passes") as show:
        study.show = show
        for analysis in analyses:
            owner = registry.owner(analysis.name)
            try:
                result = analysis.run(context)
            except (ScircuitsError, KeyboardInterrupt):
                raise
            except Exception as exc:
                if owner.startswith("builtin:"):
                    raise
                raise ConfigError(
                    f"analysis {analysis.name!r} of plugin {owner} failed: {type(exc).__name__}: {exc}. "
                    f"Nothing was written; exclude the plugin with {ALLOW_LIST_ENV} to run without it"
                ) from exc
            if not isinstance(result, analysis.Result):
                raise ConfigError(
                    f"analysis {analysis.name!r} of plugin {owner} returned {type(result).__name__}, not "
                    f"its declared result type {analysis.Result.__name__}"
                )
            check_json_fields(analysis.name, owner, result)
            context.results[analysis.name] = result
            done.append((analysis, result))
        study.show = None

    fields = {
        "config": config.model_dump(mode="json"),
        "config_hash": config.config_hash(),
        "n_examples": data.n_examples,
        "n_tokens": data.n_tokens,
        "layer": layer,
        "site": config.site,
        "active_features": int(context.active.sum()),
        "d_sae": context.d_sae,
        "statistics": StatisticsInfo(
            bootstrap_replicates=config.bootstrap,
            level=0.95,
            paired=True,
            seed=config.seed,
            significance=(
                "paired bootstrap interval of top-k minus the mean matched control excludes 0 and the "
                "exact permutation p, corrected across the k values, < 0.05: Holm when R >= 20 x (number "
                "of k), else a fixed sequence from the largest k (significance.procedure says which)"
            ),
        ),
        "evaluation_split": EvaluationSplit.describe(data.n_examples, selection, evaluation, config),
        "stats_source": (
            "evaluation tokens at the edited positions (mean activation, frequency, mean-ablation values, "
            "resample pool, controls); the ranking's tie-break and rank by activation use the "
            "selection tokens"
            if selection is not None
            else "evaluation tokens at the edited positions"
        ),
        "edited_positions": f"every position >= {config.edit_from_position} of every sequence",
        "n_conditions": study.n_conditions,
        "sequences_run": study.sequences_run,
        "sequences_unchanged": study.sequences_skipped,
        "score": score_name(layout for eb in data.batches for layout in eb.layouts),
        "remote": study.split.log.summary() if isinstance(study.split, RemoteSplitModel) else None,
        "provenance": {},
    }
    results = StudyResults.assemble(fields, done)
    held_out = None if evaluation is None else {int(i) for i in evaluation}
    rows = [
        ExampleRow(
            id=example.id,
            target=example.target,
            evaluation=held_out is None or i in held_out,
            scores={
                name: ConditionScore(logprob=float(s.logprob[i]), correct=bool(s.correct[i]))
                for name, s in context.scores.items()
                if s.scored is None or s.scored[i]
            },
            sets={
                name: ScoreSet(
                    logprob=[float(s.logprob[i]) for s in group], correct=[bool(s.correct[i]) for s in group]
                )
                for name, group in context.score_sets.items()
                if held_out is None or i in held_out
            }
            or None,
        )
        for i, example in enumerate(data.examples)
    ]
    return results, rows
