"""An example analysis: how often does splicing the SAE in (with its error term) change whether an
example is answered correctly, and by how much does it move the gold log-prob?

It reads the clean and splice scores the built-in ``baseline`` analysis recorded, so it declares
``after = ("baseline",)``; its result appears in results.json (``splice_agreement``) and its own
section in the report, with no change to scircuits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel

from scircuits import Analysis, AnalysisResult

if TYPE_CHECKING:
    from scircuits import ReportDocument, StudyContext, StudyResults


class SpliceAgreement(BaseModel):
    examples: int
    same_correctness: float  # share of examples whose correctness the splice leaves unchanged
    mean_abs_logprob_change: float  # mean |Δ gold log-prob| per example, splice vs clean
    largest_logprob_change: float


class SpliceAgreementResult(AnalysisResult):
    splice_agreement: SpliceAgreement


class SpliceAgreementAnalysis(Analysis):
    name = "splice-agreement"
    description = "Splice agreement (example plugin)"
    order = 100
    after = ("baseline",)
    Result = SpliceAgreementResult

    def run(self, context: StudyContext) -> SpliceAgreementResult:
        clean, spliced = context.scores["clean"], context.scores["splice"]
        change = abs(spliced.logprob - clean.logprob)
        return SpliceAgreementResult(
            splice_agreement=SpliceAgreement(
                examples=context.n_examples,
                same_correctness=float((clean.correct == spliced.correct).mean()),
                mean_abs_logprob_change=float(change.mean()),
                largest_logprob_change=float(change.max()),
            )
        )

    def report(self, section: ReportDocument, result: SpliceAgreementResult, results: StudyResults) -> None:
        a = result.splice_agreement
        section.heading(self.description)
        section.table(
            ["measure", "value"],
            [
                ["examples", a.examples],
                ["same correctness, clean vs splice", section.fmt(a.same_correctness)],
                ["mean |Δ gold logprob|", section.fmt(a.mean_abs_logprob_change)],
                ["largest |Δ gold logprob|", section.fmt(a.largest_logprob_change)],
            ],
        )

    def summary_lines(self, result: SpliceAgreementResult) -> list[str]:
        a = result.splice_agreement
        return [f"  splice agreement: {a.same_correctness:.3f} of examples keep their correctness"]
