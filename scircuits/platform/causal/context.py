"""``CausalStudyContext``: the causal stage's ``StudyContext`` (the contract's, in
``scircuits.platform.contract.study``), what an analysis's ``run`` works with.

The heavy parts (the model split at the site, the SAE, the evaluation batches whose lower blocks
already ran) sit behind ``study``; the context adds the shared statistics, the results of the
analyses run so far, and the per-example scores recorded for examples.jsonl.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from scircuits.platform.causal.controls import (
    MatchedControls,
    ablation_size,
    excluded_features,
    sample_matched_controls,
)
from scircuits.platform.causal.statistics import (
    Bootstrap,
    control_draws,
    control_effect,
    derived_seed,
    effect,
)
from scircuits.platform.causal.study import Condition
from scircuits.platform.contract.analyses import AnalysisResult
from scircuits.platform.contract.study import StudyContext, condition_labels

if TYPE_CHECKING:
    from scircuits.platform.causal.study import ConditionScores, Study
    from scircuits.platform.config import AblateConfig
    from scircuits.platform.contract.ablations import FeatureStats
    from scircuits.platform.contract.models import LoadedModel


@dataclass
class CausalStudyContext(StudyContext):
    """The state of one causal study, shared by its analyses in order."""

    config: AblateConfig
    loaded: LoadedModel
    study: Study
    layer: int
    stats: FeatureStats  # mean activation and a pool of token rows (for mean / resample ablations)
    mean_activation: np.ndarray  # per feature, over the edited evaluation tokens
    frequency: np.ndarray  # per feature: share of edited evaluation tokens where it fires
    bootstrap: Bootstrap  # one seeded set of replicates over the evaluation examples, shared (paired)
    # per feature, over the edited selection tokens (what ranking may see); None: ``mean_activation``
    selection_activation: np.ndarray | None = None
    selection: np.ndarray | None = None  # example indices features are ranked on (None: every example)
    evaluation: np.ndarray | None = None  # example indices effects are measured on (None: every example)
    sae_info: dict[str, Any] = field(default_factory=dict)  # the checkpoint's metadata (scircuits.json)
    # measures the SAE's error afresh on benchmark tokens apart from the evaluation examples (None:
    # nothing to measure on); called at most once, by ``fresh_reconstruction_metrics``
    measure_fresh: Callable[[], dict[str, Any] | None] | None = None
    results: dict[str, AnalysisResult] = field(default_factory=dict)  # by analysis name, so far
    scores: dict[str, ConditionScores] = field(default_factory=dict)  # recorded for examples.jsonl
    score_sets: dict[str, list[ConditionScores]] = field(default_factory=dict)  # ditto, in groups
    shared: dict[str, Any] = field(default_factory=dict)  # in-memory values analyses hand on

    # -- what the study is about -------------------------------------------------------------

    @property
    def sae(self) -> Any:
        return self.study.sae

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    @property
    def d_sae(self) -> int:
        return self.study.d_sae

    @property
    def n_examples(self) -> int:
        return self.study.data.n_examples

    # -- conditions: one pass of the blocks above the site over every example ------------------

    def run_condition(
        self,
        mode: str = "splice",
        edit_for: Callable[[int], Any] | None = None,
        ce: bool = False,
        status: str = "",
        record: str | None = None,
        record_set: str | None = None,
    ) -> ConditionScores:
        """Scores with the site's output set by ``mode`` ("clean", "splice", "reconstruction",
        "zero"), features edited by ``edit_for(batch_index)``; ``record`` names it in examples.jsonl,
        ``record_set`` appends it to that named group there."""
        if self.evaluation is None:
            full = scores = self.study.run(mode, edit_for, ce=ce, status=status)
        else:
            full = self.study.run(mode, edit_for, ce=ce, status=status, examples=self.evaluation)
            scores = full.subset(self.evaluation)
        if record is not None:
            self.scores[record] = full
        if record_set is not None:
            self.score_sets.setdefault(record_set, []).append(full)
        return scores

    def run_conditions(
        self,
        edits: Sequence[Callable[[int], Any]],
        statuses: Sequence[str] | None = None,
        records: Sequence[str | None] | None = None,
        record_set: str | None = None,
    ) -> list[ConditionScores]:
        """``run_condition("splice", edit)`` for each of ``edits``, their forwards stacked together
        (``Study.run_many``); the same scores as one at a time, up to float rounding. ``record_set``
        appends each, in order, to that named group of examples.jsonl's ``sets``."""
        statuses, records = condition_labels(len(edits), statuses, records)
        conditions = [Condition("splice", e, False, s) for e, s in zip(edits, statuses, strict=True)]
        out = []
        for scores, record in zip(self.study.run_many(conditions, self.evaluation), records, strict=True):
            if record is not None:
                self.scores[record] = scores
            if record_set is not None:
                self.score_sets.setdefault(record_set, []).append(scores)
            out.append(scores if self.evaluation is None else scores.subset(self.evaluation))
        return out

    @property
    def companion_ablations(self) -> list[str]:
        """Ablations swept over top_k beside the configured one (``sweep_also``)."""
        return list(self.study.companions)

    def ablate_edit(
        self, indices: Sequence[int], tag: int, ablation: str | None = None
    ) -> Callable[[int], Any]:
        """Edits ablating ``indices`` with the configured ablation (or the companion ``ablation``),
        seeded by (seed, tag, batch)."""
        return self.study.ablate_edit(indices, tag, ablation)

    def keep_only_edit(self, keep: Sequence[int]) -> Callable[[int], Any]:
        """Edits mean-ablating every feature outside ``keep``."""
        return self.study.keep_only_edit(keep)

    # -- effects ------------------------------------------------------------------------------

    def effect(self, scores: ConditionScores, reference: ConditionScores) -> dict[str, Any]:
        return effect(self.bootstrap, scores, reference)

    def control_effect(self, draws: Sequence[ConditionScores], reference: ConditionScores) -> dict[str, Any]:
        return control_effect(self.bootstrap, draws, reference)

    def control_draws(self, k: int, ranked: Sequence[int], draws: int) -> list[list[int]]:
        """The old unmatched draws (uniform among active features); kept for comparison."""
        return control_draws(k, ranked, self.active, draws, self.config.seed)

    def control_statistics(self) -> dict[str, np.ndarray]:
        """On the evaluation examples' edited tokens: per-feature firing frequency, ablation size
        (Σ activation × decoder-row norm) and per-example activity (n_evaluation, d_sae)."""
        cached = self.shared.get("_control_statistics")
        if cached is not None:
            return cached
        position = {int(i): j for j, i in enumerate(self.evaluation_indices)}
        fired = np.zeros(self.d_sae)
        sums = np.zeros(self.d_sae)
        tokens = 0
        activity = np.zeros((len(position), self.d_sae), dtype=bool)
        for eb in self.study.data.batches:
            mask = eb.edit_mask(self.config.edit_from_position)
            for example, layout in zip(eb.example_indices, eb.layouts, strict=True):
                if example not in position:
                    continue
                rows = list(layout.sequence_indices)
                f = eb.features[rows][mask[rows]].detach().float().cpu().numpy()
                fired += (f > 0).sum(axis=0)
                sums += f.sum(axis=0)
                tokens += f.shape[0]
                activity[position[example]] = (f > 0).any(axis=0)
        norms = self.sae.W_dec.detach().float().norm(dim=1).cpu().numpy()
        stats = {
            "frequency": fired / max(tokens, 1),
            "size": ablation_size(sums, norms),
            "activity": activity,
        }
        self.shared["_control_statistics"] = stats
        return stats

    def matched_controls(
        self, top: Sequence[int], draws: int, exclude: Sequence[int] = ()
    ) -> MatchedControls:
        """``draws`` control sets matched to ``top`` on frequency, ablation size and the examples they
        fire on (``scircuits.platform.causal.controls``), no feature twice, none of ``exclude``;
        seeded by (seed, len(top))."""
        stats = self.control_statistics()
        return sample_matched_controls(
            top,
            stats["frequency"],
            stats["size"],
            stats["activity"],
            draws=draws,
            exclude=exclude,
            rng=derived_seed(self.config.seed, 7919, len(top)),
        )

    def excluded_from_controls(self, ranked: Sequence[int]) -> list[int]:
        """The study's own top-ranked features, never drawn as controls: the top 2 x max(top_k)."""
        return excluded_features(ranked, self.config.top_k)

    # -- measurements ---------------------------------------------------------------------------

    def check_splice(self) -> dict[str, Any]:
        """Clean model vs the SAE spliced through nnsight, and the fast path vs nnsight; raises
        SpliceError beyond the configured tolerance."""
        c = self.config
        described = f"The SAE in {c.sae} may not match layer {self.layer} {c.site} of {c.model}"
        tolerance = c.resolved_splice_tolerance()
        return self.study.check_splice(
            self.loaded, c.splice_check_examples, tolerance, described, c.resolved_fast_path_tolerance()
        )

    def fresh_reconstruction_metrics(self) -> dict[str, Any] | None:
        """The SAE's relative error and FVU measured now on tokens of the benchmark apart from the
        evaluation examples (as many examples of the split collection traces, ``train``), with
        ``split``, ``examples`` and ``tokens``: the reference of an SAE that records no error of its
        own. None where the benchmark has no other split. Measured once, when first asked."""
        if "fresh_reconstruction" not in self.shared:
            measure = self.measure_fresh
            self.shared["fresh_reconstruction"] = measure() if measure is not None else None
        return self.shared["fresh_reconstruction"]

    def attribution(self) -> np.ndarray:
        """Per feature: the linear estimate of the mean change of the gold log-prob when ablated, on
        the selection examples."""
        return self.study.attribution(self.selection)

    def reconstruction_metrics(self) -> dict[str, float]:
        """The SAE's reconstruction metrics on the evaluation tokens, with FVU also computed without
        the massive dimensions and with each dimension standardised (``fvu_variants``)."""
        return {**self.study.reconstruction_metrics(), **self.fvu_variants()}

    def fvu_variants(self, massive_factor: float = 100.0) -> dict[str, float]:
        """FVU at the edited positions the SAE's training scored (its token exclusion applied) (i)
        leaving out the massive dimensions (mean square above ``massive_factor`` x the median
        dimension's) and (ii) with every dimension standardised by its own mean and standard
        deviation (each dimension weighs the same)."""
        xs, errors = [], []
        for eb in self.study.data.batches:
            mask = self.study.scored_mask(eb, self.config.edit_from_position)
            xs.append(eb.cache.site_output[mask].double().cpu().numpy())
            errors.append(eb.error[mask].double().cpu().numpy())
        if not xs:
            return {}
        x, error = np.concatenate(xs), np.concatenate(errors)
        square = (x**2).mean(axis=0)
        massive = square > massive_factor * np.median(square)
        centred = x - x.mean(axis=0)
        kept = ~massive
        variance_kept = float((centred[:, kept] ** 2).sum())
        std = x.std(axis=0)
        std[std == 0] = 1.0
        return {
            "massive_dimensions": int(massive.sum()),
            "fvu_without_massive_dimensions": float((error[:, kept] ** 2).sum()) / variance_kept
            if variance_kept > 0
            else float("nan"),
            "fvu_standardised": float(((error / std) ** 2).sum() / ((centred / std) ** 2).sum()),
        }

    def logit_effects(
        self, features: Sequence[int], n: int = 10
    ) -> dict[int, dict[str, list[dict[str, Any]]]]:
        """Tokens each feature's decoder direction promotes and suppresses (the direct path)."""
        return self.study.unembedding_effects(features, self.tokenizer, n)

    def top_contexts(self, features: Sequence[int]) -> tuple[dict[int, list[dict[str, Any]]], str]:
        """Each feature's top-activating contexts (from the store when the study has one) and the source."""
        return self.study.top_contexts(features, self.tokenizer, self.config.store)
