"""Baseline and reconstruction: the splice check, then the clean model, the splice (SAE + error
term), the SAE reconstruction alone and the zeroed site, each scored on every example.

When the benchmark marks ``meta["answer_in_prompt"]`` (the answer occurs in the prompt, so it can be
copied), the clean and splice accuracies are also given apart for the examples with and without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

from scircuits import Analysis, AnalysisResult

if TYPE_CHECKING:
    from scircuits import ReportDocument, StudyContext, StudyResults


class SpliceCheck(BaseModel):
    max_abs_logit_diff: float
    fast_path_max_abs_diff: float
    examples_checked: int
    tolerance: float
    method: str


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


class BaselineResult(AnalysisResult):
    splice: SpliceCheck
    baseline: CleanScores
    splice_scores: Scores
    reconstruction: Reconstruction
    sae_metrics_eval: dict[str, Any]  # FVU, relative error, L0, dead fraction on the evaluation tokens
    accuracy_by_answer_in_prompt: AccuracyByAnswerInPrompt | None = None  # benchmarks that mark it


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
        mark = examples[int(i)].meta.get("answer_in_prompt")
        marks.append(mark if isinstance(mark, bool) else None)
    return marks


def ce_loss_recovered(clean: float | None, sae: float | None, zero: float | None) -> float | None:
    if clean is None or sae is None or zero is None or zero == clean:
        return None
    return (zero - sae) / (zero - clean)


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
                ce_loss_recovered=ce_loss_recovered(clean.ce, recon.ce, zeroed.ce),
                zero_site_accuracy=zeroed.accuracy,
                zero_site_logprob=zeroed.mean_logprob,
            ),
            sae_metrics_eval=context.reconstruction_metrics(),
            accuracy_by_answer_in_prompt=split_accuracy(
                answer_in_prompt_marks(context), clean.correct, spliced.correct
            ),
        )

    def report(self, section: ReportDocument, result: BaselineResult, results: StudyResults) -> None:
        fmt = section.fmt
        m = section.sae_metrics(results)
        rec, base, splice = result.reconstruction, result.baseline, result.splice
        ev = result.sae_metrics_eval
        section.heading("SAE quality")
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
                ["dead fraction", fmt(m.get("dead_fraction")), m.get("source")],
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
            ],
        )
        section.figure("training", section.training_figure(), "SAE training loss and held-out FVU")

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
