"""The run report's circuit section, for a run directory that holds a circuit (RUN/circuit, written by
`scircuits run --circuit-sae ...` or `scircuits circuit --out RUN/circuit`): the circuit figure
(sites as columns), faithfulness and completeness beside random circuits, the exact checks, and the
plain statement of a negative result when the circuit is no more faithful than random ones."""

from __future__ import annotations

import io
from pathlib import Path

from scircuits.platform.circuit.figure import budget_text, cross_split_sentence, draw, size_label
from scircuits.platform.circuit.results import RESULTS_FILE, CircuitResults, CurvePoint, read_circuit
from scircuits.platform.report.document import ReportDocument, fmt, fmt_ci

CIRCUIT_DIR = "circuit"
CIRCUIT_PAGE = Path("dashboard") / "circuit.html"  # the dashboard's page (dashboard.circuit_page)


def circuit_of(run_dir: Path) -> CircuitResults | None:
    folder = run_dir / CIRCUIT_DIR
    return read_circuit(folder) if (folder / RESULTS_FILE).is_file() else None


def verdict(point: CurvePoint) -> str:
    """What the faithfulness at one size says, against random circuits of that size."""
    f, r = point.faithfulness, point.random_faithfulness
    if f is None or r is None or f != f or r != r:
        return f"At {point.size} nodes faithfulness is undefined (m(M) = m(∅) on the held-out examples)."
    if f <= r:
        return (
            f"Negative result: at {point.size} nodes the circuit is no more faithful than random circuits "
            f"of its size ({fmt(f)} {fmt_ci(point.faithfulness_ci)} against {fmt(r)}): on held-out "
            "examples it does not carry the behaviour better than chance."
        )
    if f <= 0:  # above random circuits only because they score below the empty circuit
        return (
            f"Negative result: at {point.size} nodes the circuit carries none of the behaviour on held-out "
            f"examples (faithfulness {fmt(f)} {fmt_ci(point.faithfulness_ci)}, no better than the empty "
            f"circuit; random circuits {fmt(r)})."
        )
    low = (point.faithfulness_ci or [f])[0]
    if low <= r:
        return (
            f"At {point.size} nodes faithfulness {fmt(f)} {fmt_ci(point.faithfulness_ci)} is above random "
            f"circuits' {fmt(r)}, but its interval reaches them: not distinguishable from chance."
        )
    return (
        f"At {point.size} nodes the circuit is more faithful than random circuits of its size: {fmt(f)} "
        f"{fmt_ci(point.faithfulness_ci)} against {fmt(r)}."
    )


def figure(results: CircuitResults) -> bytes:
    buffer = io.BytesIO()
    draw(results, buffer)
    return buffer.getvalue()


def circuit_section(doc: ReportDocument, run_dir: Path) -> None:
    """Add the circuit section when the run holds a circuit; nothing otherwise."""
    results = circuit_of(run_dir)
    if results is None:
        return
    r = results
    doc.heading("Circuit")
    sites = ", ".join(f"{s.name} ({s.d_sae} latents)" for s in r.sites)
    doc.paragraph(
        f"A feature circuit over {sites} (docs/circuits.md; files in {CIRCUIT_DIR}/). Metric: {r.score}. "
        f"Found on {r.n_selection} selection examples by {r.method} against the {r.baseline} baseline; "
        f"measured on {r.n_evaluation} held-out examples. It keeps {len(r.nodes)} of {r.n_nodes_total} "
        f"nodes ({budget_text(r)}; every site's SAE error term is a node) and {len(r.edges)} edges; "
        f"positions {r.positions}."
    )
    doc.figure(
        "circuit",
        figure(r),
        "The circuit: one column per site, the metric last; nodes sized by |effect|, edges by |weight| "
        "(blue raises the metric, red lowers it); squares are SAE error terms.",
    )
    href = CIRCUIT_PAGE.as_posix()  # `scircuits run` and `scircuits dashboard RUN` draw it there
    doc.paragraph(
        f"[Open the interactive graph]({href}) (the run's dashboard; its nodes link to the feature pages)."
    )
    doc.table(
        ["circuit size", "faithfulness", "random", "completeness", "random"],
        [
            [
                size_label(p),
                f"{fmt(p.faithfulness)} {fmt_ci(p.faithfulness_ci)}",
                f"{fmt(p.random_faithfulness)} {fmt_ci(p.random_faithfulness_ci)}",
                f"{fmt(p.completeness)} {fmt_ci(p.completeness_ci)}",
                f"{fmt(p.random_completeness)} {fmt_ci(p.random_completeness_ci)}",
            ]
            for p in r.curves
        ],
    )
    doc.paragraph(
        "Faithfulness (m(C) − m(∅)) / (m(M) − m(∅)), every node outside the circuit patched to its "
        "baseline; completeness the same for the complement (near 0: the circuit holds what matters). "
        f"Random: the mean over {r.curves[0].random_draws if r.curves else 0} random circuits of the same "
        "size among active nodes. Intervals: paired bootstrap over held-out examples."
    )
    whole = next((p for p in r.curves if p.size == len(r.nodes)), None)
    if whole is not None:
        doc.paragraph(verdict(whole))
    crossed = cross_split_sentence(r)
    if crossed:
        doc.paragraph(crossed)
    for label, agreement in (("nodes", r.exact_nodes), ("edges", r.exact_edges)):
        if agreement is None or agreement.n == 0:
            continue
        doc.paragraph(
            f"Exact check of the top {agreement.n} {label}: Spearman ρ between attribution and exact "
            f"effect {fmt(agreement.spearman)} {fmt_ci(agreement.spearman_ci)}; opposite sign: "
            f"{', '.join(agreement.opposite_sign) or 'none'}."
        )
