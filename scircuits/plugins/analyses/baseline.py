"""Baseline and reconstruction: the splice check, then the clean model, the splice (SAE + error
term), the SAE reconstruction alone and the zeroed site, each scored on every example."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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


class BaselineResult(AnalysisResult):
    splice: SpliceCheck
    baseline: CleanScores
    splice_scores: Scores
    reconstruction: Reconstruction
    sae_metrics_eval: dict[str, Any]  # FVU, relative error, L0, dead fraction on the evaluation tokens


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
                    "gold target",
                ],
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
