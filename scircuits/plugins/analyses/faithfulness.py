"""Faithfulness: keep only the top n features (the rest mean-ablated) and measure
(m(S) − m(∅)) / (m(all) − m(∅)), m the mean gold log-prob."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel

from scircuits import Analysis, AnalysisResult

if TYPE_CHECKING:
    from scircuits import ReportDocument, StudyContext, StudyResults


class FaithfulnessPoint(BaseModel):
    n: int
    value: float | None
    logprob: float
    accuracy: float


class FaithfulnessReference(BaseModel):
    all: float
    none: float
    metric: str


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
            curve.append(
                FaithfulnessPoint(n=n, value=value, logprob=kept.mean_logprob, accuracy=kept.accuracy)
            )
        return FaithfulnessResult(
            faithfulness=curve,
            faithfulness_reference=FaithfulnessReference(
                all=spliced.mean_logprob, none=empty.mean_logprob, metric="mean logprob"
            ),
        )

    def report(self, section: ReportDocument, result: FaithfulnessResult, results: StudyResults) -> None:
        fmt = section.fmt
        section.heading("Faithfulness")
        section.table(
            ["n kept", "faithfulness", "mean logprob", "accuracy"],
            [[p.n, fmt(p.value), fmt(p.logprob), fmt(p.accuracy)] for p in result.faithfulness],
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
        ax.plot([p.n for p in shown], [p.value for p in shown], "o-")
        ax.axhline(1, color="gray", linestyle="--", linewidth=0.8)
        ax.axhline(0, color="black", linewidth=0.5)
        section.log_ticks(ax, [p.n for p in shown])
        ax.set_xlabel("features kept (n), the rest mean-ablated")
        ax.set_ylabel("faithfulness")
        ax.set_title("Faithfulness (m(S) − m(∅)) / (m(all) − m(∅)), m = mean logprob")
        return section.png(fig)
