"""Baseline and reconstruction: the splice check, then the clean model, the splice (SAE + error
term), the SAE reconstruction alone and the zeroed site, each scored on every example.

When the benchmark marks ``meta["answer_in_prompt"]`` (the answer occurs in the prompt, so it can be
copied), the clean and splice accuracies are also given apart for the examples with and without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

from scircuits import Analysis, AnalysisResult, ConfigError, ScircuitsError

if TYPE_CHECKING:
    from scircuits import ReportDocument, StudyContext, StudyResults


class ReconstructionGateError(ScircuitsError):
    """The SAE does not reconstruct the site it is spliced into well enough to study its features."""


class SpliceCheck(BaseModel):
    max_abs_logit_diff: float
    fast_path_max_abs_diff: float
    examples_checked: int
    tolerance: float
    method: str
    edited_fast_path_max_abs_diff: float | None = None
    edited_features: int | None = None
    dtype: str | None = None  # the model's compute dtype the check ran in (its tolerance follows it)
    # the conditions' upper blocks in a lower dtype (--study-dtype): the fast path ran in it, checked
    # against its own tolerance (None: the model's dtype and ``tolerance``)
    study_dtype: str | None = None
    fast_path_tolerance: float | None = None
    # the blocks the fast path ran: "fused" (float32 Llama-style stacks) or "transformers"; None
    # in studies from before the fused blocks, and on NDIF
    fast_path_blocks: str | None = None


class ReconstructionGate(BaseModel):
    """The SAE's fit to the site: thresholds and what was measured against them."""

    relative_error: float  # per token |x - x̂|² / |x|² on the evaluation tokens
    training_relative_error: float | None  # the same on the checkpoint's training store (held out)
    error_growth: float | None  # the measured error / its reference (reference_metric)
    ce_loss_recovered: float | None
    max_relative_error: float
    max_error_growth: float
    min_ce_loss_recovered: float
    passed: bool
    # what error_growth compares: "relative_error" or "fvu", the reference value, and where it is from
    reference_metric: str | None = None
    reference: float | None = None
    reference_source: str | None = None
    reference_tokens: int | None = None  # the tokens the reference was measured on, when known


TRAINING_STORE = "the held-out tokens of its training store"


def gate_reference(
    context: StudyContext, metrics: dict[str, Any]
) -> tuple[str | None, float | None, str, int | None]:
    """(metric, reference value, source in words, tokens it was measured on when known) of the gate's
    growth check: the checkpoint's own held-out relative error, else what a published SAE's metadata
    gives (relative error, or variance explained as FVU), else a fresh measurement on benchmark tokens
    apart from the evaluation ones, else none, said so."""
    trained = context.sae_training_metrics.get("relative_error")
    if isinstance(trained, (int, float)) and trained > 0:
        tokens = context.sae_training_metrics.get("tokens")
        return "relative_error", float(trained), TRAINING_STORE, tokens if isinstance(tokens, int) else None
    info = context.sae_info if isinstance(context.sae_info, dict) else {}
    published = info.get("published_metrics") if isinstance(info.get("published_metrics"), dict) else {}
    given = published.get("relative_error")
    if isinstance(given, (int, float)) and given > 0:
        return "relative_error", float(given), "the published SAE's metadata", None
    explained = published.get("variance_explained")
    if isinstance(explained, (int, float)) and 0 <= explained < 1 and "fvu" in metrics:
        source = f"the published SAE's metadata (variance explained {explained})"
        return "fvu", 1.0 - float(explained), source, None
    fresh = context.fresh_reconstruction_metrics()
    if fresh is not None and fresh["relative_error"] > 0:
        source = (
            f"a fresh measurement on {fresh['tokens']} tokens of {fresh['examples']} examples of the "
            f"benchmark's {fresh['split']} split (the SAE records no error of its own)"
        )
        return "relative_error", float(fresh["relative_error"]), source, int(fresh["tokens"])
    return (
        None,
        None,
        (
            "none recorded, and the benchmark has no split apart from the evaluation one to measure it "
            "on: the error measured here is the only measurement, so the growth limit does not apply"
        ),
        None,
    )


class BehaviourChange(BaseModel):
    """The reconstruction alone (no error term) against the clean model, per example, paired."""

    accuracy_delta: float
    accuracy_ci: list[float]
    logprob_delta: float
    logprob_ci: list[float]
    changes_behaviour: bool  # either interval excludes 0
    warning: str | None = None


class Scores(BaseModel):
    accuracy: float
    logprob: float


class CleanScores(Scores):
    ce_loss: float | None


class Reconstruction(BaseModel):
    accuracy: float
    logprob: float
    ce_loss: float | None
    ce_loss_zero_site: float | None
    ce_loss_clean: float | None
    ce_loss_recovered: float | None
    zero_site_accuracy: float
    zero_site_logprob: float


class AccuracyByAnswerInPrompt(BaseModel):
    """Accuracy on the examples whose answer occurs in the prompt and on the others (None: no example)."""

    n_in_prompt: int
    n_not_in_prompt: int
    clean_in_prompt: float | None
    clean_not_in_prompt: float | None
    splice_in_prompt: float | None
    splice_not_in_prompt: float | None


class Capability(BaseModel):
    """Whether the model can do the benchmark at all (clean accuracy on the evaluation examples)."""

    clean_accuracy: float
    accuracy_ci: list[float]  # paired bootstrap 95% interval over the evaluation examples
    chance: float  # 1 / choices for multiple choice (averaged over examples), 0 for free-form answers
    floor: float  # max(chance, MIN_ACCURACY): at or below it the model cannot do the benchmark
    capable: bool
    note: str | None = None  # what the numbers mean when it cannot


# Clean accuracy at or below max(chance, MIN_ACCURACY), or with its interval's upper bound below chance:
# the model does not do the task, so accuracy effects are undefined (nothing to remove) and log-prob
# effects measure how features move the probability of an answer the model does not give.
MIN_ACCURACY = 0.02


def capability(context: StudyContext, clean: Any) -> Capability:
    """Can the model do the benchmark? From the clean accuracy on the evaluation examples."""
    examples = context.study.data.examples
    chances = [
        1.0 / len(examples[int(i)].choices) if examples[int(i)].choices else 0.0
        for i in context.evaluation_indices
    ]
    chance = float(np.mean(chances)) if chances else 0.0
    interval = context.bootstrap.interval(clean.correct.astype(float)).as_list()
    floor = max(chance, MIN_ACCURACY)
    capable = not (clean.accuracy <= floor or interval[1] < chance)
    note = None
    if not capable:
        note = (
            f"clean accuracy {clean.accuracy:.3f} is at or below {floor:g} (chance {chance:.3g}): the model "
            "cannot do this benchmark, so accuracy effects are undefined (their significance is not "
            "tested) and log-prob effects measure how features move the probability of an answer the "
            "model does not give, a behaviour it lacks"
        )
    return Capability(
        clean_accuracy=clean.accuracy,
        accuracy_ci=interval,
        chance=chance,
        floor=floor,
        capable=capable,
        note=note,
    )


class BaselineResult(AnalysisResult):
    splice: SpliceCheck
    baseline: CleanScores
    splice_scores: Scores
    reconstruction: Reconstruction
    sae_metrics_eval: dict[str, Any]  # FVU, relative error, L0, dead fraction on the evaluation tokens
    gate: ReconstructionGate | None = None
    behaviour: BehaviourChange | None = None
    accuracy_by_answer_in_prompt: AccuracyByAnswerInPrompt | None = None  # benchmarks that mark it
    capability: Capability | None = None  # None in an older results.json


def split_accuracy(
    in_prompt: list[bool | None], clean: np.ndarray, spliced: np.ndarray
) -> AccuracyByAnswerInPrompt | None:
    """Clean and splice accuracy apart for examples marked True / False (None when any is unmarked)."""
    if not in_prompt or any(mark is None for mark in in_prompt):
        return None
    marked = np.array(in_prompt, dtype=bool)

    def mean(correct: np.ndarray, where: np.ndarray) -> float | None:
        return float(correct[where].mean()) if where.any() else None

    return AccuracyByAnswerInPrompt(
        n_in_prompt=int(marked.sum()),
        n_not_in_prompt=int((~marked).sum()),
        clean_in_prompt=mean(clean, marked),
        clean_not_in_prompt=mean(clean, ~marked),
        splice_in_prompt=mean(spliced, marked),
        splice_not_in_prompt=mean(spliced, ~marked),
    )


def answer_in_prompt_marks(context: StudyContext) -> list[bool | None]:
    """``meta["answer_in_prompt"]`` of each evaluation example, in evaluation order (None: unmarked)."""
    examples = context.study.data.examples
    marks = []
    for i in context.evaluation_indices:
        example = examples[int(i)]
        mark = example.meta.get("answer_in_prompt")
        if mark is not None and not isinstance(mark, bool):
            raise ConfigError(
                f"example {example.id!r}: meta['answer_in_prompt'] must be True or False (or left out), not "
                f"{mark!r}; fix the benchmark"
            )
        marks.append(mark)
    return marks


def latent_usage_rows(m: dict[str, Any], fmt: Any) -> list[list[Any]]:
    """Dead (never fired) and rare (fired on < 1e-4 of the tokens) latents, and what they were counted on."""
    tokens = m.get("usage_tokens", m.get("tokens"))
    where = (
        f"{tokens:,} training tokens, final weights"
        if "usage_tokens" in m
        else f"{m.get('source')}, {tokens if tokens is not None else '?'} tokens"
    )
    rows = [["dead fraction (never fired)", fmt(m.get("dead_fraction")), where]]
    if "rare_fraction" in m:
        threshold = m.get("rare_threshold", 1e-4)
        rows.append(
            [f"rare fraction (fired on < {threshold:g} of the tokens)", fmt(m["rare_fraction"]), where]
        )
    return rows


def excluded_token_rows(ev: dict[str, Any], fmt: Any) -> list[list[Any]]:
    """The metrics over every token, when the SAE's training left sinks and outliers out of its scores."""
    if "relative_error_all_tokens" not in ev:
        return []
    return [
        [
            "relative error per token, every token",
            fmt(ev["relative_error_all_tokens"]),
            f"evaluation tokens including the {ev.get('tokens_excluded')} the SAE's training leaves out "
            "(attention sinks, outlier norms)",
        ],
        ["FVU, every token", fmt(ev.get("fvu_all_tokens")), "evaluation tokens including those"],
    ]


def ce_loss_recovered(clean: float | None, sae: float | None, zero: float | None) -> float | None:
    if clean is None or sae is None or zero is None or zero == clean:
        return None
    return (zero - sae) / (zero - clean)


# CE loss recovered divides by CE(zeroed site) − CE(clean): below this many nats the site hardly
# matters to the loss (a tiny random model) and the ratio says nothing about the SAE.
CE_GAP_NATS = 0.1


# An SAE whose fraction of variance unexplained on its own training store's held-out tokens is above
# this has not learned the site (docs/metrics.md, "Reconstruction gate"): a gate
# failure is then blamed on too little training, not on the layer, site or model.
UNDERTRAINED_FVU = 0.3


def _undertrained(training_fvu: Any) -> bool:
    return (
        isinstance(training_fvu, (int, float))
        and not isinstance(training_fvu, bool)
        and training_fvu > UNDERTRAINED_FVU
    )


def reconstruction_gate(
    context: StudyContext, metrics: dict[str, Any], recovered: float | None, ce_gap: float | None
) -> ReconstructionGate:
    """Refuses an SAE that does not fit the site: the splice with its error term is exact for any
    SAE, so only the reconstruction itself can tell a wrong layer, site, model or scale."""
    config = context.config
    relative_error = float(metrics.get("relative_error", float("nan")))
    metric, reference, source, reference_tokens = gate_reference(context, metrics)
    trained = reference if source == TRAINING_STORE else None
    measured = float(metrics.get(metric, float("nan"))) if metric else None
    growth = measured / reference if metric and reference else None
    problems = []
    if not relative_error <= config.max_relative_error:
        problems.append(
            f"per-token relative error {relative_error:.3g} on the evaluation tokens (limit "
            f"{config.max_relative_error:g}, --max-relative-error)"
        )
    if growth is not None and not growth <= config.max_error_growth:
        problems.append(
            f"{metric.replace('_', ' ')} {measured:.3g} is {growth:.1f}x the {reference:.3g} of {source} "
            f"(limit {config.max_error_growth:g}x, --max-error-growth)"
        )
    ce_counts = recovered is not None and ce_gap is not None and ce_gap >= CE_GAP_NATS
    if ce_counts and not recovered >= config.min_ce_loss_recovered:
        problems.append(
            f"CE loss recovered {recovered:.3g} (limit {config.min_ce_loss_recovered:g}, "
            "--min-ce-loss-recovered)"
        )
    gate = ReconstructionGate(
        relative_error=relative_error,
        training_relative_error=trained,
        error_growth=growth,
        ce_loss_recovered=recovered,
        max_relative_error=config.max_relative_error,
        max_error_growth=config.max_error_growth,
        min_ce_loss_recovered=config.min_ce_loss_recovered,
        passed=not problems,
        reference_metric=metric,
        reference=reference,
        reference_source=source,
        reference_tokens=reference_tokens,
    )
    training_fvu = context.sae_training_metrics.get("fvu")
    if problems and config.reconstruction_gate and _undertrained(training_fvu):
        raise ReconstructionGateError(
            f"the SAE in {config.sae or '(given)'} is undertrained: raise --train-tokens. It misfits its own "
            f"training store too (FVU {training_fvu:.3g} there, above {UNDERTRAINED_FVU:g}), so its fit at "
            f"layer {context.layer} {config.site} ({'; '.join(problems)}) is no sign of a wrong layer, site "
            "or model; train it on more tokens and run again (--no-reconstruction-gate studies it anyway)"
        )
    if problems and config.reconstruction_gate:
        raise ReconstructionGateError(
            f"the SAE in {config.sae or '(given)'} does not reconstruct layer {context.layer} "
            f"{config.site} of {config.model}: {'; '.join(problems)}. Likely causes: the SAE was trained "
            "on another layer, site or model, or its input scale is not applied. Check --layer, --site "
            "and --model against the SAE's training; relax the limit only if you know why the fit is "
            "worse here (--no-reconstruction-gate studies it anyway)"
        )
    return gate


def behaviour_change(context: StudyContext, recon: Any, clean: Any) -> BehaviourChange:
    effect = context.effect(recon, clean)
    changes = any(effect[f"{m}_ci"][0] > 0 or effect[f"{m}_ci"][1] < 0 for m in ("accuracy", "logprob"))
    warning = None
    acc, lp = effect["accuracy_ci"], effect["logprob_ci"]
    if changes:
        warning = (
            f"the SAE's reconstruction alone changes behaviour: accuracy {effect['accuracy_delta']:+.3f} "
            f"[{acc[0]:+.3f}, {acc[1]:+.3f}], gold log-prob {effect['logprob_delta']:+.3f} "
            f"[{lp[0]:+.3f}, {lp[1]:+.3f}] "
            "versus the clean model; effects are measured with the error term kept, but features that "
            "reconstruct the site this differently may not be the ones the model uses"
        )
    return BehaviourChange(
        accuracy_delta=effect["accuracy_delta"],
        accuracy_ci=effect["accuracy_ci"],
        logprob_delta=effect["logprob_delta"],
        logprob_ci=effect["logprob_ci"],
        changes_behaviour=changes,
        warning=warning,
    )


class Baseline(Analysis):
    name = "baseline"
    description = "SAE quality"
    order = 10
    Result = BaselineResult

    def passes(self, context: StudyContext) -> int:
        return 4

    def run(self, context: StudyContext) -> BaselineResult:
        splice = context.check_splice()
        clean = context.run_condition("clean", ce=True, status="clean", record="clean")
        spliced = context.run_condition("splice", status="splice", record="splice")
        recon = context.run_condition(
            "reconstruction", ce=True, status="reconstruction", record="reconstruction"
        )
        zeroed = context.run_condition("zeroed-site", ce=True, status="zero site", record="zero_site")
        context.shared["splice"] = spliced  # the reference of every effect
        able = capability(context, clean)
        context.shared["capable"] = able.capable  # accuracy effects are undefined when it is not
        recovered = ce_loss_recovered(clean.ce, recon.ce, zeroed.ce)
        ce_gap = None if clean.ce is None or zeroed.ce is None else zeroed.ce - clean.ce
        metrics = context.reconstruction_metrics()
        gate = reconstruction_gate(context, metrics, recovered, ce_gap)
        return BaselineResult(
            splice=SpliceCheck(**splice),
            baseline=CleanScores(accuracy=clean.accuracy, logprob=clean.mean_logprob, ce_loss=clean.ce),
            splice_scores=Scores(accuracy=spliced.accuracy, logprob=spliced.mean_logprob),
            reconstruction=Reconstruction(
                accuracy=recon.accuracy,
                logprob=recon.mean_logprob,
                ce_loss=recon.ce,
                ce_loss_zero_site=zeroed.ce,
                ce_loss_clean=clean.ce,
                ce_loss_recovered=recovered,
                zero_site_accuracy=zeroed.accuracy,
                zero_site_logprob=zeroed.mean_logprob,
            ),
            sae_metrics_eval=metrics,
            gate=gate,
            behaviour=behaviour_change(context, recon, clean),
            accuracy_by_answer_in_prompt=split_accuracy(
                answer_in_prompt_marks(context), clean.correct, spliced.correct
            ),
            capability=able,
        )

    def report(self, section: ReportDocument, result: BaselineResult, results: StudyResults) -> None:
        fmt = section.fmt
        m = section.sae_metrics(results)
        rec, base, splice = result.reconstruction, result.baseline, result.splice
        ev = result.sae_metrics_eval
        section.heading("SAE quality")
        if result.capability is not None and not result.capability.capable:
            section.paragraph(f"**The model cannot do this benchmark:** {result.capability.note}.")
        section.table(
            ["metric", "value", "measured on"],
            [
                ["FVU", fmt(m.get("fvu")), m.get("source")],
                [
                    "relative error per token (mean |x - x̂|² / |x|²)",
                    fmt(m.get("relative_error")),
                    m.get("source"),
                ],
                [
                    f"FVU without the {ev.get('massive_dimensions', '–')} massive dimension(s)",
                    fmt(ev.get("fvu_without_massive_dimensions")),
                    "evaluation tokens; massive: mean square > 100 x the median dimension's",
                ],
                [
                    "FVU with every dimension standardised",
                    fmt(ev.get("fvu_standardised")),
                    "evaluation tokens; each dimension weighs the same",
                ],
                [
                    "variance share of the largest dimension",
                    fmt(m.get("top_dim_variance_share")),
                    "FVU mostly measures that dimension when this is near 1",
                ],
                ["L0 (active latents per token)", fmt(m.get("l0"), 1), m.get("source")],
                *latent_usage_rows(m, fmt),
                *excluded_token_rows(ev, fmt),
                *[
                    [
                        f"FVU without the first {key.rsplit('_', 1)[1]} position(s)",
                        fmt(value),
                        "evaluation tokens",
                    ]
                    for key, value in result.sae_metrics_eval.items()
                    if key.startswith("fvu_positions_from_")
                ],
                [
                    "CE loss recovered",
                    fmt(rec.ce_loss_recovered),
                    f"CE clean {fmt(rec.ce_loss_clean)}, SAE {fmt(rec.ce_loss)}, "
                    f"zeroed site {fmt(rec.ce_loss_zero_site)}",
                ],
                [
                    "accuracy: clean / SAE reconstruction / zeroed site",
                    f"{fmt(base.accuracy)} / {fmt(rec.accuracy)} / {fmt(rec.zero_site_accuracy)}",
                    "benchmark examples",
                ],
                [
                    "mean logprob: clean / SAE reconstruction",
                    f"{fmt(base.logprob)} / {fmt(rec.logprob)}",
                    results.score or "gold target",
                ],
                *answer_in_prompt_rows(result.accuracy_by_answer_in_prompt, fmt),
                [
                    "splice exactness (max |Δlogit|)",
                    fmt(splice.max_abs_logit_diff),
                    f"SAE + error term via nnsight, {splice.examples_checked} examples, "
                    f"tolerance {splice.tolerance}",
                ],
                [
                    "fast path vs nnsight with features edited (max |Δlogit|)",
                    fmt(splice.edited_fast_path_max_abs_diff),
                    f"the {splice.edited_features} most active features zeroed",
                ],
                *gate_rows(result.gate, fmt),
                *behaviour_rows(result.behaviour, fmt, section.fmt_ci),
            ],
        )
        if result.behaviour is not None and result.behaviour.warning:
            section.paragraph(f"**Warning:** {result.behaviour.warning}.")
        section.figure("training", section.training_figure(), "SAE training loss and held-out FVU")

    def summary_lines(self, result: BaselineResult) -> list[str]:
        behaviour, able = result.behaviour, result.capability
        lines = [f"  warning: {behaviour.warning}"] if behaviour is not None and behaviour.warning else []
        if able is not None and not able.capable:
            lines.insert(0, f"  warning: {able.note}")
        return lines

    def headline(self, result: BaselineResult) -> list[str]:
        recovered = result.reconstruction.ce_loss_recovered
        return [
            f"splice max |Δlogit| {result.splice.max_abs_logit_diff:.2e}",
            f"accuracy clean {result.baseline.accuracy:.3f}, SAE {result.reconstruction.accuracy:.3f}",
            f"CE loss recovered {'–' if recovered is None else format(recovered, '.3f')}",
        ]

    def comparison(self, section: ReportDocument, result: BaselineResult) -> dict[str, str]:
        return {
            "CE loss recovered": section.fmt(result.reconstruction.ce_loss_recovered),
            "accuracy": section.fmt(result.baseline.accuracy),
        }


def gate_rows(gate: ReconstructionGate | None, fmt: Any) -> list[list[Any]]:
    if gate is None:
        return []
    return [
        [
            "reconstruction gate",
            "passed" if gate.passed else "failed",
            f"relative error {fmt(gate.relative_error)} (≤ {gate.max_relative_error:g}); "
            + (
                f"{fmt(gate.error_growth)}x the {gate.reference_metric or 'relative error'} "
                f"{fmt(gate.reference if gate.reference is not None else gate.training_relative_error)} of "
                f"{gate.reference_source or 'its training store'} (≤ {gate.max_error_growth:g}x); "
                if gate.error_growth is not None
                else f"growth: no reference ({gate.reference_source or 'none recorded'}); "
            )
            + f"CE loss recovered ≥ {gate.min_ce_loss_recovered:g}",
        ]
    ]


def behaviour_rows(behaviour: BehaviourChange | None, fmt: Any, fmt_ci: Any) -> list[list[Any]]:
    if behaviour is None:
        return []
    return [
        [
            "reconstruction vs clean: Δaccuracy, Δlogprob",
            f"{fmt(behaviour.accuracy_delta)} {fmt_ci(behaviour.accuracy_ci)}, "
            f"{fmt(behaviour.logprob_delta)} {fmt_ci(behaviour.logprob_ci)}",
            "evaluation examples, paired; "
            + ("changes behaviour" if behaviour.changes_behaviour else "no change shown"),
        ]
    ]


def answer_in_prompt_rows(split: AccuracyByAnswerInPrompt | None, fmt: Any) -> list[list[Any]]:
    if split is None:
        return []
    return [
        [
            f"accuracy, answer in the prompt ({split.n_in_prompt} examples): clean / splice",
            f"{fmt(split.clean_in_prompt)} / {fmt(split.splice_in_prompt)}",
            "the answer can be copied from the prompt",
        ],
        [
            f"accuracy, answer not in the prompt ({split.n_not_in_prompt} examples): clean / splice",
            f"{fmt(split.clean_not_in_prompt)} / {fmt(split.splice_not_in_prompt)}",
            "the benchmark's meta['answer_in_prompt']",
        ],
    ]
