"""The study-level types of the analysis family: ``StudyContext``, what an analysis's ``run`` works
with, and ``StudyResults``, the typed results.json every analysis's report reads.

They are the contract's: plugins see them as ``scircuits.StudyContext`` and ``scircuits.StudyResults``.
The causal stage provides the context (``scircuits.platform.causal.context.CausalStudyContext``, on
its model split, SAE and evaluation batches) and writes and reads the results file
(``scircuits.platform.causal.results``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from scircuits.platform.contract import jsonvalues
from scircuits.platform.contract.analyses import Analysis, AnalysisResult
from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.contract.options import describe_validation_error

if TYPE_CHECKING:
    from scircuits.platform.contract.ablations import FeatureStats
    from scircuits.platform.contract.models import LoadedModel

R = TypeVar("R", bound=AnalysisResult)


def condition_labels(
    n: int, statuses: Sequence[str] | None, records: Sequence[str | None] | None
) -> tuple[list[str], list[str | None]]:
    """``run_conditions``' statuses and records, one per condition (none given: "" and None)."""
    return (
        list(statuses) if statuses is not None else [""] * n,
        list(records) if records is not None else [None] * n,
    )


class StudyContext(ABC):
    """The state of one causal study, shared by its analyses in order: what ``Analysis.run`` gets.

    ``config`` is the stage's ``AblateConfig``; ``study`` the model split at the site with the SAE
    and the evaluation batches (the blocks below the site already run); ``bootstrap`` one seeded set
    of replicates over the evaluation examples, shared by every condition (paired).
    """

    config: Any
    loaded: LoadedModel
    study: Any
    layer: int
    stats: FeatureStats  # mean activation and a pool of token rows (for mean / resample ablations)
    mean_activation: np.ndarray  # per feature, over the edited evaluation tokens
    frequency: np.ndarray  # per feature: share of edited evaluation tokens where it fires
    bootstrap: Any
    # per feature, over the edited selection tokens (what ranking may see); None: ``mean_activation``
    selection_activation: np.ndarray | None
    selection: np.ndarray | None  # example indices features are ranked on (None: every example)
    evaluation: np.ndarray | None  # example indices effects are measured on (None: every example)
    sae_info: dict[str, Any]  # the checkpoint's metadata (scircuits.json)
    results: dict[str, AnalysisResult]  # by analysis name, so far
    scores: dict[str, Any]  # condition scores recorded for examples.jsonl
    score_sets: dict[str, list[Any]]  # ordered groups of condition scores (``record_set``), ditto
    shared: dict[str, Any]  # in-memory values analyses hand on

    # -- what the study is about -------------------------------------------------------------

    @property
    @abstractmethod
    def sae(self) -> Any: ...

    @property
    @abstractmethod
    def tokenizer(self) -> Any: ...

    @property
    @abstractmethod
    def d_sae(self) -> int: ...

    @property
    @abstractmethod
    def n_examples(self) -> int: ...

    @property
    def ranking_activation(self) -> np.ndarray:
        """Mean activation per feature over the tokens features are ranked on (the selection split)."""
        return self.mean_activation if self.selection_activation is None else self.selection_activation

    @property
    def evaluation_indices(self) -> np.ndarray:
        return np.arange(self.n_examples) if self.evaluation is None else self.evaluation

    @property
    def n_evaluation(self) -> int:
        return len(self.evaluation_indices)

    @property
    def random_controls(self) -> int:
        """Matched control sets per k."""
        return int(self.config.random_controls)

    @property
    def active(self) -> np.ndarray:
        """Per feature: fires on at least one edited evaluation token."""
        return self.frequency > 0

    @property
    def seed(self) -> int:
        return int(self.config.seed)

    def result(self, name: str, kind: type[R]) -> R:
        """The result of an earlier analysis (name it in your ``after``)."""
        value = self.results.get(name)
        if not isinstance(value, kind):
            raise KeyError(f"no {kind.__name__} result named {name!r} yet: list {name!r} in `after`")
        return value

    @property
    def sae_training_metrics(self) -> dict[str, Any]:
        """The reconstruction metrics the checkpoint recorded on its training store's held-out
        tokens (empty for an SAE without them, e.g. one from another tool)."""
        meta = self.sae_info.get("meta")
        metrics = (meta if isinstance(meta, dict) else {}).get("metrics")
        return dict(metrics) if isinstance(metrics, dict) else {}

    def fresh_reconstruction_metrics(self) -> dict[str, Any] | None:
        """The SAE's relative error and FVU measured now on tokens of the benchmark apart from the
        evaluation examples, with ``split``, ``examples`` and ``tokens``: the reconstruction gate's
        reference for an SAE that records no error of its own. None where nothing can be measured
        (the default; the causal study measures it)."""
        return None

    # -- conditions: one pass of the blocks above the site over every example ------------------

    @abstractmethod
    def run_condition(
        self,
        mode: str = "splice",
        edit_for: Callable[[int], Any] | None = None,
        ce: bool = False,
        status: str = "",
        record: str | None = None,
        record_set: str | None = None,
    ) -> Any:
        """Scores (per evaluation example) with the site's output set by ``mode`` ("clean",
        "splice", "reconstruction", "zero"), features edited by ``edit_for(batch_index)``;
        ``record`` names it in examples.jsonl; ``record_set`` appends it to that named group there
        (e.g. the R control sets of one k, in draw order)."""

    def run_conditions(
        self,
        edits: Sequence[Callable[[int], Any]],
        statuses: Sequence[str] | None = None,
        records: Sequence[str | None] | None = None,
        record_set: str | None = None,
    ) -> list[Any]:
        """``run_condition("splice", edit, status=..., record=..., record_set=...)`` for each of
        ``edits``, in order (``record_set`` appends every one of them to that group, in order). A
        context may run them together (the causal study stacks their forwards); this default runs
        them one at a time."""
        return [
            self.run_condition("splice", edit, status=status, record=record, record_set=record_set)
            for edit, status, record in zip(
                edits, *condition_labels(len(edits), statuses, records), strict=True
            )
        ]

    @property
    @abstractmethod
    def companion_ablations(self) -> list[str]:
        """Ablations swept over top_k beside the configured one (``sweep_also``)."""

    @abstractmethod
    def ablate_edit(
        self, indices: Sequence[int], tag: int, ablation: str | None = None
    ) -> Callable[[int], Any]:
        """Edits ablating ``indices`` with the configured ablation (or the companion ``ablation``),
        seeded by (seed, tag, batch)."""

    @abstractmethod
    def keep_only_edit(self, keep: Sequence[int]) -> Callable[[int], Any]:
        """Edits mean-ablating every feature outside ``keep``."""

    # -- effects ------------------------------------------------------------------------------

    @abstractmethod
    def effect(self, scores: Any, reference: Any) -> dict[str, Any]:
        """Mean per-example change of accuracy and gold log-prob against ``reference``, with paired
        bootstrap intervals."""

    @abstractmethod
    def control_effect(self, draws: Sequence[Any], reference: Any) -> dict[str, Any]:
        """The effect of random control draws against ``reference``."""

    @abstractmethod
    def control_draws(self, k: int, ranked: Sequence[int], draws: int) -> list[list[int]]:
        """The old unmatched draws (uniform among active features); kept for comparison."""

    @abstractmethod
    def control_statistics(self) -> dict[str, np.ndarray]:
        """Per-feature firing frequency, ablation size and per-example activity on the evaluation
        examples' edited tokens."""

    @abstractmethod
    def matched_controls(self, top: Sequence[int], draws: int, exclude: Sequence[int] = ()) -> Any:
        """``draws`` control sets matched to ``top`` on frequency, ablation size and the examples
        they fire on, none of ``exclude``; seeded by (seed, len(top))."""

    @abstractmethod
    def excluded_from_controls(self, ranked: Sequence[int]) -> list[int]:
        """The study's own top-ranked features, never drawn as controls."""

    # -- measurements ---------------------------------------------------------------------------

    @abstractmethod
    def check_splice(self) -> dict[str, Any]:
        """Clean model vs the SAE spliced in; raises SpliceError beyond the configured tolerance."""

    @abstractmethod
    def attribution(self) -> np.ndarray:
        """Per feature: the linear estimate of the mean change of the gold log-prob when ablated, on
        the selection examples."""

    @abstractmethod
    def reconstruction_metrics(self) -> dict[str, float]:
        """The SAE's reconstruction metrics on the evaluation tokens."""

    @abstractmethod
    def fvu_variants(self, massive_factor: float = 100.0) -> dict[str, float]:
        """FVU without the massive dimensions and with each dimension standardised."""

    @abstractmethod
    def logit_effects(
        self, features: Sequence[int], n: int = 10
    ) -> dict[int, dict[str, list[dict[str, Any]]]]:
        """Tokens each feature's decoder direction promotes and suppresses (the direct path)."""

    @abstractmethod
    def top_contexts(self, features: Sequence[int]) -> tuple[dict[int, list[dict[str, Any]]], str]:
        """Each feature's top-activating contexts and where they came from."""


RESULTS_FORMAT = "scircuits.causal"
RESULTS_FORMAT_VERSION = 1
SCHEMA_VERSION = 2


class StatisticsInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bootstrap_replicates: int
    level: float
    paired: bool
    seed: int
    significance: str


class EvaluationSplit(BaseModel):
    """Which examples features were ranked on and which their effects were measured on."""

    method: str
    n_selection: int
    n_evaluation: int
    selection_fraction: float
    seed: int

    @classmethod
    def describe(cls, n_examples: int, selection: Any, evaluation: Any, config: Any) -> EvaluationSplit:
        if selection is None or evaluation is None:
            return cls(
                method="none: ranked and measured on the same examples",
                n_selection=n_examples,
                n_evaluation=n_examples,
                selection_fraction=config.selection_fraction,
                seed=config.seed,
            )
        return cls(
            method=(
                "held-out: attribution ranks features on a seeded random selection split; every "
                "condition (sweeps, exact ablations, faithfulness, baselines) is measured on the rest"
            ),
            n_selection=len(selection),
            n_evaluation=len(evaluation),
            selection_fraction=config.selection_fraction,
            seed=config.seed,
        )


class StudyResults(BaseModel):
    """results.json: the study-level fields, plus each analysis's result fields (extra keys)."""

    model_config = ConfigDict(extra="allow")

    format: Literal["scircuits.causal"] = RESULTS_FORMAT
    format_version: int = RESULTS_FORMAT_VERSION
    schema_version: int = SCHEMA_VERSION
    analyses: list[str]
    config: dict[str, Any]
    config_hash: str
    n_examples: int
    n_tokens: int
    layer: int
    site: str
    active_features: int
    d_sae: int
    statistics: StatisticsInfo
    stats_source: str
    edited_positions: str
    n_conditions: int
    # edited conditions run the upper blocks only on sequences whose features the edit changes
    sequences_run: int | None = None
    sequences_unchanged: int | None = None
    evaluation_split: EvaluationSplit | None = None
    score: str | None = None  # what every per-example log-prob is (scoring.score_name)
    remote: dict[str, Any] | None = None  # --remote: the NDIF requests made and the bytes sent/returned
    provenance: dict[str, Any]
    wall_seconds: float | None = None

    @classmethod
    def assemble(
        cls, fields: dict[str, Any], results: Sequence[tuple[Analysis, AnalysisResult]]
    ) -> StudyResults:
        """Study-level ``fields`` and each analysis's result, in run order."""
        extra: dict[str, Any] = {}
        for _, result in results:
            extra.update(result.model_dump(mode="python"))
        return cls(**fields, analyses=[a.name for a, _ in results], **extra)

    def analysis_fields(self) -> dict[str, Any]:
        return dict(self.__pydantic_extra__ or {})

    def result_of(self, analysis: Analysis) -> AnalysisResult | None:
        """The typed result of ``analysis`` in this file; None when it did not run."""
        if analysis.name not in self.analyses:
            return None
        extra = self.analysis_fields()
        fields = analysis.Result.model_fields
        values = {key: extra[key] for key in fields if key in extra}
        try:  # results.json writes an undefined number as null: a float field reads it back as NaN
            return jsonvalues.validate_nulls_as_nan(analysis.Result, values)
        except ValidationError as exc:
            raise ConfigError(
                f"the {analysis.name!r} result in results.json does not match its schema: "
                f"{describe_validation_error(exc)}"
            ) from None

    def to_json(self) -> str:
        return jsonvalues.dumps(self.model_dump(mode="python"), indent=2)
