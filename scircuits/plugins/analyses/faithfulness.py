"""Faithfulness: keep only the top n features (the rest mean-ablated) and measure
(m(S) − m(∅)) / (m(all) − m(∅)), m the mean gold log-prob, with a paired bootstrap interval. Features
only: the SAE's error term is kept in every condition, so this is the faithfulness of the features
relative to the splice, not of a circuit to the model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel

from scircuits import Analysis, AnalysisResult

if TYPE_CHECKING:
    from scircuits import ReportDocument, StudyContext, StudyResults


LABEL = "features only, error term kept"


class FaithfulnessPoint(BaseModel):
    n: int
    value: float | None
    ci: list[float] | None = None  # paired 95% bootstrap interval over the evaluation examples
    logprob: float
    accuracy: float


class FaithfulnessReference(BaseModel):
    all: float
    none: float
    metric: str
    label: str = LABEL


class FaithfulnessResult(AnalysisResult):
    faithfulness: list[FaithfulnessPoint]
    faithfulness_reference: FaithfulnessReference


def points(context: StudyContext) -> list[int]:
    return sorted({n for n in context.config.faithfulness_n if 0 < n <= context.d_sae})


class Faithfulness(Analysis):
    name = "faithfulness"
    description = "Faithfulness"
    order = 50
    Result = FaithfulnessResult
    after = ("baseline", "ranking")

    def passes(self, context: StudyContext) -> int:
        return len(points(context)) + 1

    def run(self, context: StudyContext) -> FaithfulnessResult:
        ranked: list[int] = context.shared["ranked"]
        spliced = context.shared["splice"]
        empty = context.run_condition(
            "splice", context.keep_only_edit([]), status="faithfulness ∅", record="keep_none"
        )
        curve = []
        denominator = spliced.mean_logprob - empty.mean_logprob
        for n in points(context):
            kept = context.run_condition(
                "splice", context.keep_only_edit(ranked[:n]), status=f"faithfulness {n}"
            )
            value = (kept.mean_logprob - empty.mean_logprob) / denominator if denominator else None
            interval = (
                context.bootstrap.ratio_interval(kept.logprob, empty.logprob, spliced.logprob)
                if denominator
                else None
            )
            curve.append(
                FaithfulnessPoint(
                    n=n, value=value, ci=interval, logprob=kept.mean_logprob, accuracy=kept.accuracy
                )
            )
        return FaithfulnessResult(
            faithfulness=curve,
            faithfulness_reference=FaithfulnessReference(
                all=spliced.mean_logprob, none=empty.mean_logprob, metric="mean logprob"
            ),
        )

    def report(self, section: ReportDocument, result: FaithfulnessResult, results: StudyResults) -> None:
        fmt = section.fmt
        section.heading(f"Faithfulness ({LABEL})")
        section.table(
            ["n kept", "faithfulness", "95% CI", "mean logprob", "accuracy"],
            [
                [p.n, fmt(p.value), section.fmt_ci(p.ci), fmt(p.logprob), fmt(p.accuracy)]
                for p in result.faithfulness
            ],
        )
        section.figure(
            "faithfulness", self.figure(section, result), "faithfulness of keeping the top n features"
        )

    @staticmethod
    def figure(section: ReportDocument, result: FaithfulnessResult) -> bytes | None:
        shown = [p for p in result.faithfulness if p.value is not None]
        if not shown:
            return None
        plt = section.pyplot()
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.plot([p.n for p in shown], [p.value for p in shown], "o-", label=LABEL)
        with_ci = [p for p in shown if p.ci]
        if with_ci:
            ax.fill_between(
                [p.n for p in with_ci], [p.ci[0] for p in with_ci], [p.ci[1] for p in with_ci], alpha=0.2
            )
        ax.legend(fontsize=8)
        ax.axhline(1, color="gray", linestyle="--", linewidth=0.8)
        ax.axhline(0, color="black", linewidth=0.5)
        section.log_ticks(ax, [p.n for p in shown])
        ax.set_xlabel("features kept (n), the rest mean-ablated")
        ax.set_ylabel("faithfulness")
        ax.set_title("Faithfulness (m(S) − m(∅)) / (m(all) − m(∅)), m = mean logprob")
        return section.png(fig)
