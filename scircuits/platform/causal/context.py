"""``StudyContext``: what an analysis's ``run`` works with (see ``scircuits.platform.contract.analyses``).

The heavy parts (the model split at the site, the SAE, the evaluation batches whose lower blocks
already ran) sit behind ``study``; the context adds the shared statistics, the results of the
analyses run so far, and the per-example scores recorded for examples.jsonl.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from scircuits.platform.causal.statistics import Bootstrap, control_draws, control_effect, effect
from scircuits.platform.contract.analyses import AnalysisResult

if TYPE_CHECKING:
    from scircuits.platform.causal.study import ConditionScores, Study
    from scircuits.platform.config import AblateConfig
    from scircuits.platform.contract.ablations import FeatureStats
    from scircuits.platform.contract.models import LoadedModel

R = TypeVar("R", bound=AnalysisResult)


@dataclass
class StudyContext:
    """The state of one causal study, shared by its analyses in order."""

    config: AblateConfig
    loaded: LoadedModel
    study: Study
    layer: int
    stats: FeatureStats  # mean activation and a pool of token rows (for mean / resample ablations)
    mean_activation: np.ndarray  # per feature, over the edited evaluation tokens
    frequency: np.ndarray  # per feature: share of edited evaluation tokens where it fires
    bootstrap: Bootstrap  # one seeded set of replicates shared by every effect (paired)
    results: dict[str, AnalysisResult] = field(default_factory=dict)  # by analysis name, so far
    scores: dict[str, ConditionScores] = field(default_factory=dict)  # recorded for examples.jsonl
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

    @property
    def active(self) -> np.ndarray:
        """Per feature: fires on at least one edited evaluation token."""
        return self.frequency > 0

    @property
    def seed(self) -> int:
        return self.config.seed

    def result(self, name: str, kind: type[R]) -> R:
        """The result of an earlier analysis (name it in your ``after``)."""
        value = self.results.get(name)
        if not isinstance(value, kind):
            raise KeyError(f"no {kind.__name__} result named {name!r} yet: list {name!r} in `after`")
        return value

    # -- conditions: one pass of the blocks above the site over every example ------------------

    def run_condition(
        self,
        mode: str = "splice",
        edit_for: Callable[[int], Any] | None = None,
        ce: bool = False,
        status: str = "",
        record: str | None = None,
    ) -> ConditionScores:
        """Scores with the site's output set by ``mode`` ("clean", "splice", "reconstruction",
        "zero"), features edited by ``edit_for(batch_index)``; ``record`` names it in examples.jsonl."""
        scores = self.study.run(mode, edit_for, ce=ce, status=status)
        if record is not None:
            self.scores[record] = scores
        return scores

    def ablate_edit(self, indices: Sequence[int], tag: int) -> Callable[[int], Any]:
        """Edits ablating ``indices`` with the configured ablation, seeded by (seed, tag, batch)."""
        return self.study.ablate_edit(indices, tag)

    def keep_only_edit(self, keep: Sequence[int]) -> Callable[[int], Any]:
        """Edits mean-ablating every feature outside ``keep``."""
        return self.study.keep_only_edit(keep)

    # -- effects ------------------------------------------------------------------------------

    def effect(self, scores: ConditionScores, reference: ConditionScores) -> dict[str, Any]:
        return effect(self.bootstrap, scores, reference)

    def control_effect(self, draws: Sequence[ConditionScores], reference: ConditionScores) -> dict[str, Any]:
        return control_effect(self.bootstrap, draws, reference)

    def control_draws(self, k: int, ranked: Sequence[int], draws: int) -> list[list[int]]:
        return control_draws(k, ranked, self.active, draws, self.config.seed)

    # -- measurements ---------------------------------------------------------------------------

    def check_splice(self) -> dict[str, Any]:
        """Clean model vs the SAE spliced through nnsight, and the fast path vs nnsight; raises
        SpliceError beyond the configured tolerance."""
        c = self.config
        described = f"The SAE in {c.sae} may not match layer {self.layer} {c.site} of {c.model}"
        return self.study.check_splice(self.loaded, c.splice_check_examples, c.splice_tolerance, described)

    def attribution(self) -> np.ndarray:
        """Per feature: the linear estimate of the mean change of the gold log-prob when ablated."""
        return self.study.attribution()

    def reconstruction_metrics(self) -> dict[str, float]:
        return self.study.reconstruction_metrics()

    def logit_effects(
        self, features: Sequence[int], n: int = 10
    ) -> dict[int, dict[str, list[dict[str, Any]]]]:
        """Tokens each feature's decoder direction promotes and suppresses (the direct path)."""
        return self.study.unembedding_effects(features, self.tokenizer, n)

    def top_contexts(self, features: Sequence[int]) -> tuple[dict[int, list[dict[str, Any]]], str]:
        """Each feature's top-activating contexts (from the store when the study has one) and the source."""
        return self.study.top_contexts(features, self.tokenizer, self.config.store)
