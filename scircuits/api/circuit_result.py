"""The circuit's typed result (``scircuits.circuit``, ``scircuits.load_circuit``): its results.json
(``CircuitResults``, docs/circuits.md) with where it is, a one-line repr, an HTML table and its tables
(nodes, edges, the faithfulness curve, sites) as lists of dicts or DataFrames."""

from __future__ import annotations

from typing import Any

from scircuits.api.results import html_table, to_pandas
from scircuits.platform.circuit.results import CircuitResults, CurvePoint
from scircuits.platform.contract.errors import ConfigError

TABLES = ("nodes", "edges", "curves", "sites")


class CircuitResult(CircuitResults):
    """A feature circuit: results.json's fields (``nodes``, ``edges``, ``curves``, ``sites``,
    ``splice``, ``exact_nodes``, ...) and the folder it is in."""

    path: str | None = None

    def tables(self) -> list[str]:
        """The tables it holds: nodes, edges, curves (faithfulness and completeness by size), sites."""
        return list(TABLES)

    def table(self, name: str = "nodes") -> list[dict[str, Any]]:
        """The table ``name`` as a list of dicts; ConfigError naming the tables there are."""
        if name not in TABLES:
            raise ConfigError(f"a circuit has no table {name!r}; its tables: {', '.join(TABLES)}")
        return [row.model_dump(mode="python") for row in getattr(self, name)]

    def to_pandas(self, name: str = "nodes") -> Any:
        """The table ``name`` (default: the nodes, ranked by |effect|) as a DataFrame."""
        return to_pandas(self.table(name))

    def point(self) -> CurvePoint | None:
        """The curve's point at the circuit's own size (its faithfulness and completeness)."""
        return next((p for p in reversed(self.curves) if p.size == len(self.nodes)), None)

    def headline(self) -> list[tuple[str, Any]]:
        point = self.point()
        rows: list[tuple[str, Any]] = [
            ("path", self.path),
            ("model", self.model),
            ("benchmark", self.benchmark),
            ("score", self.score),
            ("sites", ", ".join(s.name for s in self.sites)),
            ("nodes", len(self.nodes)),
            ("edges", len(self.edges)),
            ("selection / evaluation examples", f"{self.n_selection} / {self.n_evaluation}"),
            ("splice max |logit diff|", self.splice.get("max_abs_logit_diff")),
        ]
        if point is not None:
            rows += [("faithfulness", point.faithfulness), ("completeness", point.completeness)]
        if self.exact_nodes is not None:
            rows.append(("exact nodes Spearman", self.exact_nodes.spearman))
        rows += [(f"node {n.rank}", f"{n.id} effect {n.effect:.4g}") for n in self.nodes[:5]]
        rows.append(("tables", ", ".join(TABLES)))
        return rows

    def __repr__(self) -> str:
        point = self.point()
        value = None if point is None else point.faithfulness
        faithfulness = "None" if value is None else f"{value:.4g}"
        return (
            f"CircuitResult(path={self.path!r}, model={self.model!r}, "
            f"sites={[s.name for s in self.sites]}, nodes={len(self.nodes)}, edges={len(self.edges)}, "
            f"faithfulness={faithfulness}, n_evaluation={self.n_evaluation})"
        )

    __str__ = __repr__

    def _repr_html_(self) -> str:
        return html_table("CircuitResult", self.headline())
