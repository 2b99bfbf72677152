"""Ranking: the attribution of every feature (one forward and backward pass per batch), and the
order in which the sweeps, the exact ablations and the faithfulness curve take features."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel

from scircuits import Analysis, AnalysisResult

if TYPE_CHECKING:
    from scircuits import ReportDocument, StudyContext, StudyResults


class RankInfo(BaseModel):
    method: Literal["attribution", "activation"]
    order: str
    top: list[int]


class RankingResult(AnalysisResult):
    rank: RankInfo


class Ranking(Analysis):
    name = "ranking"
    description = "Feature ranking"
    order = 20
    Result = RankingResult
    after = ("baseline",)

    def passes(self, context: StudyContext) -> int:
        return 3  # a backward costs about two forwards

    def run(self, context: StudyContext) -> RankingResult:
        config = context.config
        attribution = context.attribution()
        if config.rank == "attribution":
            # most negative first; ties by activation (both on the selection examples)
            order = np.lexsort((-context.ranking_activation, attribution))
        else:
            order = np.argsort(-context.ranking_activation, kind="stable")
        ranked = [int(i) for i in order]
        context.shared["attribution"] = attribution
        context.shared["ranked"] = ranked
        return RankingResult(
            rank=RankInfo(
                method=config.rank,
                order="most negative attribution first"
                if config.rank == "attribution"
                else "highest mean activation first",
                top=ranked[: max([*config.top_k, config.exact_top, 1])],
            )
        )

    def report(self, section: ReportDocument, result: RankingResult, results: StudyResults) -> None:
        """The ranking shows in the sweeps, importance and feature sections."""
