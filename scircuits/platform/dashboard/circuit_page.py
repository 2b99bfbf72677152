"""The dashboard's circuit page (circuit.html): the graph of a `scircuits circuit` result, drawn with
the vendored Cytoscape from packaged files (static/), its nodes linked to this dashboard's feature
pages where the circuit's site uses the run's own SAE.

The page's script and style are files in ``static/`` and its HTML the template ``templates/circuit.html``;
this module fills the template and writes the page's data (``data/circuit.js``, ``window.SC_CIRCUIT``)
beside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scircuits.platform.common.pages import packaged_text, render

if TYPE_CHECKING:
    from scircuits.platform.circuit.results import CircuitNode, CircuitResults

PACKAGE = "scircuits.platform.dashboard"
PAGE = "circuit.html"
DATA = "circuit.js"
METRIC_ID = "metric"  # graph.json's id of the metric node
STATIC = ("circuit.js", "circuit.css")
VENDOR = ("cytoscape.min.js", "cytoscape.LICENSE")
SCRIPTS = ["assets/vendor/cytoscape.min.js", "assets/common.js", f"data/{DATA}", "assets/circuit.js"]


@dataclass
class CircuitPage:
    """What the circuit page is written from."""

    folder: Path
    title: str
    summary: str
    links_note: str
    data: dict[str, Any]


def static_text(*parts: str) -> str:
    return packaged_text(PACKAGE, "static", *parts)


def _why_unlinked(node: CircuitNode, linked_site: str | None, pages: set[int], run_site: str) -> str | None:
    if node.kind == "error":
        return "an SAE error term: it has no feature page"
    if node.site != linked_site:
        return f"this dashboard has pages for the run's SAE ({run_site}) only"
    if node.feature not in pages:
        return "no page: the feature fires on none of the scanned tokens, or --features left it out"
    return None


def _ci(values: list[float] | None) -> str:
    return "" if not values else f" [{values[0]:.2f}, {values[1]:.2f}]"


def circuit_page(
    folder: Path, results: CircuitResults, linked_site: str | None, pages: set[int], run_site: str
) -> CircuitPage:
    """The page of ``results``: nodes at ``linked_site`` with a page in ``pages`` link to it."""
    columns = {s.name: k for k, s in enumerate(results.sites)}
    nodes: list[dict[str, Any]] = []
    for site in results.sites:
        here = sorted((n for n in results.nodes if n.site == site.name), key=lambda n: (-abs(n.effect), n.id))
        for node in here:
            why = _why_unlinked(node, linked_site, pages, run_site)
            label = f"{node.site} #{node.feature}" if node.kind == "feature" else f"{node.site} error"
            nodes.append(
                {
                    "id": node.id,
                    "label": label,
                    "site": node.site,
                    "column": columns[node.site],
                    "kind": node.kind,
                    "feature": node.feature,
                    "effect": node.effect,
                    "exact_effect": node.exact_effect,
                    "rank": node.rank,
                    "frequency": node.frequency,
                    "href": None if why else f"features/{node.feature}.html",
                    "why": why,
                    "by_position": node.by_position,
                }
            )
    metric = {"id": METRIC_ID, "label": "metric", "site": "", "column": len(columns), "kind": "metric"}
    nodes.append({**metric, "effect": 0.0, "href": None, "why": None})
    data = {
        "metric_id": METRIC_ID,
        "score": results.score,
        "sites": [{"name": s.name, "linked": s.name == linked_site} for s in results.sites],
        # --positions kept: each aligned position's index and token (the nodes' by_position follow them)
        "positions": None
        if results.position_tokens is None
        else [{"index": p.index, "label": p.label} for p in results.position_tokens],
        "nodes": nodes,
        "edges": [
            {
                "source": e.source,
                "target": e.target,
                "weight": e.weight,
                "exact": e.exact,
                "opposite_sign": e.opposite_sign,
            }
            for e in results.edges
        ],
    }
    last = next((p for p in results.curves if p.size == len(results.nodes)), None)
    faithful = ""
    if last is not None and last.faithfulness is not None:
        faithful = (
            f" Faithfulness of the whole circuit on {results.n_evaluation} held-out examples: "
            f"{last.faithfulness:.2f}{_ci(last.faithfulness_ci)}"
            + (
                f" (random circuits of its size: {last.random_faithfulness:.2f})"
                if last.random_faithfulness is not None
                else ""
            )
            + "."
        )
    summary = (
        f"{results.model} on {results.benchmark}: {len(results.nodes)} nodes and {len(results.edges)} "
        f"edges over {', '.join(columns)}, found on {results.n_selection} selection examples by "
        f"{results.method}; metric: {results.score}.{faithful}"
    )
    if linked_site is not None:
        links_note = (
            f"Feature nodes at {linked_site} (this dashboard's SAE) link to their feature pages; error "
            "terms and the nodes of other sites link nowhere."
        )
    else:
        links_note = (
            f"No site of this circuit uses this dashboard's SAE ({run_site}), so no node links to a "
            "feature page."
        )
    return CircuitPage(folder, f"Circuit · {results.model} · {results.benchmark}", summary, links_note, data)


def write_circuit_page(tmp: Path, page: CircuitPage, report_href: str | None, js_assign: Any) -> None:
    """Write circuit.html, its script, style and vendored library, and data/circuit.js into the
    site's staging folder ``tmp`` (assets/ and data/ exist there)."""
    for name in STATIC:
        (tmp / "assets" / name).write_text(static_text(name))
    (tmp / "assets" / "vendor").mkdir(exist_ok=True)
    for name in VENDOR:
        (tmp / "assets" / "vendor" / name).write_text(static_text("vendor", name))
    (tmp / "data" / DATA).write_text(js_assign("window.SC_CIRCUIT", page.data))
    (tmp / PAGE).write_text(
        render(
            PACKAGE,
            PAGE,
            title=page.title,
            up="",
            scripts=SCRIPTS,
            report_href=report_href,
            summary=page.summary,
            links_note=page.links_note,
            source=str(page.folder / "results.json"),
        )
    )


def drop_stale_page(target: Path) -> None:
    """A site rebuilt without a circuit keeps no circuit page of an earlier build."""
    (target / PAGE).unlink(missing_ok=True)
