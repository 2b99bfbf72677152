"""The analysis family: one unit of the causal study (plugins register them with ``register_analyses``).

An analysis has a ``name``, an ``order`` (the study runs analyses by ascending order, then name), the
names of the analyses whose results it reads (``after``), a typed result (a subclass of
``AnalysisResult``), ``run(context) -> result`` and its own report section. The fields of its
result are written at the top level of results.json (so two analyses may not share a field name)
and read back through the same model; ``results.analyses`` lists the analyses of a run in order.

``context`` is a ``scircuits.StudyContext``: the model split at the site, the SAE, the evaluation
batches (the blocks below the site already run), the feature statistics, the seeded bootstrap,
the results of the analyses run before, and methods that run one condition (one pass over the
examples on the blocks above the site) and summarise effects. ``section`` is a
``scircuits.ReportDocument``: headings, paragraphs, tables and figures written to markdown and HTML.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from scircuits.platform.contract.study import StudyContext, StudyResults
    from scircuits.platform.report.document import ReportDocument  # the report writer, above


class AnalysisResult(BaseModel):
    """The typed result of one analysis; its fields become top-level keys of results.json."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def keys(cls) -> list[str]:
        return list(cls.model_fields)


class Analysis:
    """One analysis of the causal study. Subclass it, set the class attributes, implement ``run``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    order: ClassVar[float] = 100.0  # built-ins use 10..70; a plugin's default runs after them
    after: ClassVar[tuple[str, ...]] = ()  # analyses whose results ``run`` reads
    Result: ClassVar[type[AnalysisResult]] = AnalysisResult

    def passes(self, context: StudyContext) -> int:
        """How many condition passes ``run`` will make (sizes the progress bar; 0 if unknown)."""
        return 0

    def run(self, context: StudyContext) -> AnalysisResult:
        raise NotImplementedError(f"analysis {self.name!r} does not implement run()")

    def report(self, section: ReportDocument, result: Any, results: StudyResults) -> None:
        """Write this analysis's report section (default: its fields as a table)."""
        section.heading(self.description or self.name)
        section.table(
            ["field", "value"], [[key, section.fmt(value)] for key, value in result.model_dump().items()]
        )

    def findings(self, section: ReportDocument, result: Any, results: StudyResults) -> list[str]:
        """Sentences for the report's Findings section."""
        return []

    def headline(self, result: Any) -> list[str]:
        """Short phrases for the first line of the CLI summary."""
        return []

    def summary_lines(self, result: Any) -> list[str]:
        """Lines printed under the CLI summary's first line."""
        return []

    def comparison(self, section: ReportDocument, result: Any) -> dict[str, str]:
        """Columns of the comparison table of several runs (column -> formatted value)."""
        return {}

    def __repr__(self) -> str:
        return f"<analysis {self.name}>"
