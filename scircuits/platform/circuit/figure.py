"""The circuit's report section (report.md) and its figure (circuit.png): one column per site in the
model's order, the metric last; nodes sized by |effect|, edges drawn by weight (blue raises the
score, red lowers it)."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from scircuits.files import write_atomic
from scircuits.platform.circuit.results import OUTPUT_ID, CircuitResults, CurvePoint

FIGURE_FILE = "circuit.png"
REPORT_FILE = "report.md"


def layout(results: CircuitResults) -> dict[str, tuple[float, float]]:
    """(x, y) of every node: x the site's column, y its rank within the column (largest on top)."""
    columns = {s.name: k for k, s in enumerate(results.sites)}
    where: dict[str, tuple[float, float]] = {}
    for name, x in columns.items():
        here = sorted((n for n in results.nodes if n.site == name), key=lambda n: -abs(n.effect))
        for row, node in enumerate(here):
            where[node.id] = (float(x), -float(row))
    where[OUTPUT_ID] = (float(len(columns)), 0.0)
    return where


def draw(results: CircuitResults, path: Path | BinaryIO) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    where = layout(results)
    rows = max((-y for _, y in where.values()), default=0) + 1
    fig, ax = plt.subplots(figsize=(2.2 * (len(results.sites) + 1) + 1, 0.45 * rows + 1.5))
    biggest_edge = max((abs(e.weight) for e in results.edges), default=1.0) or 1.0
    for edge in sorted(results.edges, key=lambda e: abs(e.weight)):
        if edge.source not in where or edge.target not in where:
            continue
        (x0, y0), (x1, y1) = where[edge.source], where[edge.target]
        ax.plot(
            [x0, x1],
            [y0, y1],
            color="tab:blue" if edge.weight > 0 else "tab:red",
            linewidth=0.3 + 3.5 * abs(edge.weight) / biggest_edge,
            alpha=0.6,
            zorder=1,
        )
    biggest_node = max((abs(n.effect) for n in results.nodes), default=1.0) or 1.0
    for node in results.nodes:
        x, y = where[node.id]
        ax.scatter(
            [x],
            [y],
            s=30 + 270 * abs(node.effect) / biggest_node,
            color="tab:blue" if node.effect > 0 else "tab:red",
            marker="o" if node.kind == "feature" else "s",
            edgecolor="black",
            zorder=2,
        )
        ax.annotate(
            "err" if node.kind == "error" else str(node.feature),
            (x, y),
            xytext=(7, -3),
            textcoords="offset points",
            fontsize=7,
        )
    ax.scatter([where[OUTPUT_ID][0]], [0], s=200, marker="*", color="black", zorder=2)
    ax.set_xticks(range(len(results.sites) + 1), [s.name for s in results.sites] + ["metric"])
    ax.set_yticks([])
    ax.set_title(
        f"{results.model} on {results.benchmark}: {len(results.nodes)} nodes, {len(results.edges)} edges"
    )
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ci(values: list[float] | None) -> str:
    return "—" if not values else f"[{values[0]:.2f}, {values[1]:.2f}]"


def _num(value: float | None) -> str:
    return "—" if value is None or value != value else f"{value:.3f}"


def budget_text(r: CircuitResults) -> str:
    """How the nodes were chosen: the global budget, or the per-site one."""
    if r.thresholds.get("node_selection") == "per-site":
        return f"the top {r.thresholds['nodes_per_site']} of each site"
    return f"budget {r.thresholds['nodes']}"


def size_label(p: CurvePoint) -> str:
    return str(p.size) if p.nodes_per_site is None else f"{p.size} ({p.nodes_per_site} per site)"


def _curve_row(p: CurvePoint) -> str:
    return (
        f"| {size_label(p)} | {_num(p.faithfulness)} {_ci(p.faithfulness_ci)} | "
        f"{_num(p.random_faithfulness)} {_ci(p.random_faithfulness_ci)} | "
        f"{_num(p.completeness)} {_ci(p.completeness_ci)} | "
        f"{_num(p.random_completeness)} {_ci(p.random_completeness_ci)} |"
    )


def cross_split_sentence(results: CircuitResults) -> str | None:
    """--check-split / --check-seed: the circuit's faithfulness on the other split's examples and on
    another seed's, beside its held-out one."""
    sentences = []
    for title, check in (("Cross-split", results.cross_split), ("Second-seed", results.cross_seed)):
        if check is None:
            continue
        p = check.point
        here = next((q for q in results.curves if q.size == p.size), None)
        held_out = (
            "" if here is None else f", against {_num(here.faithfulness)} {_ci(here.faithfulness_ci)} here"
        )
        drawn = "" if title == "Cross-split" else f" drawn with seed {check.seed}"
        sentences.append(
            f"{title} check: the same {p.size}-node circuit on {check.n_examples} examples of the "
            f"{check.split} split{drawn} keeps faithfulness {_num(p.faithfulness)} {_ci(p.faithfulness_ci)} "
            f"(random circuits {_num(p.random_faithfulness)}){held_out}; completeness "
            f"{_num(p.completeness)} {_ci(p.completeness_ci)}."
        )
    return " ".join(sentences) or None


def section(results: CircuitResults) -> str:
    """The circuit's report section in Markdown."""
    r = results
    sites = ", ".join(f"{s.name} ({s.d_sae} latents, {s.active_features} active)" for s in r.sites)
    lines = [
        "## Circuit",
        "",
        f"Sites: {sites}. Metric: {r.score}. Found on {r.n_selection} selection examples by {r.method} "
        f"against the {r.baseline} baseline; evaluated on {r.n_evaluation} held-out examples. Positions "
        f"{r.positions}. Every site keeps its SAE error term as a node: the spliced model differs from "
        f"the model by {r.splice['max_abs_logit_diff']:.2g} in the logits.",
        "",
        f"![circuit]({FIGURE_FILE})",
        "",
        f"The circuit keeps {len(r.nodes)} of {r.n_nodes_total} nodes ({budget_text(r)}, "
        f"largest |effect| {r.largest_effect:.3g}) and {len(r.edges)} edges.",
        "",
        "| size | faithfulness [95% CI] | random | completeness | random |",
        "|---|---|---|---|---|",
        *(_curve_row(p) for p in r.curves),
        "",
        "Faithfulness (m(C) − m(∅)) / (m(M) − m(∅)) with every node outside C patched to its baseline; "
        "completeness the same for the complement (near 0: the circuit holds what matters). Random: the "
        "mean over random circuits of the same size drawn among active nodes.",
        "",
    ]
    for label, agreement in (("nodes", r.exact_nodes), ("edges", r.exact_edges)):
        if agreement is None or agreement.n == 0:
            continue
        flagged = ", ".join(agreement.opposite_sign) or "none"
        lines.append(
            f"Exact check of the top {agreement.n} {label}: Spearman ρ between attribution and exact "
            f"effect {_num(agreement.spearman)} {_ci(agreement.spearman_ci)}; opposite sign: {flagged}."
        )
    crossed = cross_split_sentence(r)
    if crossed:
        lines += ["", crossed]
    lines += ["", "| node | effect | exact |", "|---|---|---|"]
    lines += [f"| {n.id} | {n.effect:.4f} | {_num(n.exact_effect)} |" for n in r.nodes[:20]]
    return "\n".join(lines) + "\n"


def write_report(folder: Path, results: CircuitResults) -> None:
    draw(results, folder / FIGURE_FILE)
    write_atomic(folder / REPORT_FILE, section(results))
