"""The compare report section: ``compare/report.md`` with figures in ``compare/figures/``.

Every similarity is printed beside the same quantity for the run's ceiling (its SAE vs a seed twin
on the same store) and floors (an untrained SAE; a random orthonormal basis). For runs on different
models, layers or sites the floors are those of the pair's own spaces (``PairResult.floors``: A's
SAE against what learned nothing on B's activations, and the reverse); A's own-store floors are
shown beside them for reference only. The tables hold only normalised quantities (correlations,
shares, RSA, p-values, counts): no raw losses.
"""

from __future__ import annotations

import html
import sys
from pathlib import Path

from scircuits.files import write_atomic
from scircuits.platform.compare.schema import CompareResults, Comparison, PairResult, RunEntry

REPORT_FILE = "report.md"


def _f(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _p(value: float | None) -> str:
    return "–" if value is None else (f"{value:.3g}")


def _row(name: str, c: Comparison | None) -> str:
    if c is None:
        return f"| {name} | – | – | – | – | – | – |"
    g = c.geometry
    return (
        f"| {name} | {_f(c.max_a_to_b.mean)} | {_f(c.max_b_to_a.mean)} | {_f(c.hungarian.mean)} | "
        f"{_f(c.hungarian.above_07)} | {_f(g.rsa)} (p={_p(g.p_value)}, n={g.n_pairs}) | {c.n_tokens} |"
    )


HEADER = (
    "| comparison | max corr A→B (mean) | max corr B→A (mean) | 1-to-1 corr (mean) | "
    "share 1-to-1 > 0.7 | decoder RSA | tokens |\n|---|---|---|---|---|---|---|"
)


def _references(lines: list[str], run: RunEntry, tag: str, own_store: str = "") -> None:
    ref = run.reference
    lines.append(_row(f"ceiling {tag}: {run.label} vs its seed twin", ref.ceiling))
    lines.append(_row(f"floor {tag}{own_store}: {run.label} vs untrained SAE", ref.floor_untrained))
    lines.append(_row(f"floor {tag}{own_store}: {run.label} vs random basis", ref.floor_rotation))


def floors_of(pair: PairResult, runs: list[RunEntry]) -> tuple[Comparison | None, Comparison | None, str]:
    """(untrained-SAE floor, random-basis floor, where) of the pair's A → B figures: in the pair's
    spaces when compare measured them (runs on different models, layers or sites), else A's own
    floors (both runs read the same activations)."""
    if pair.floors is not None:
        return pair.floors.a_vs_untrained_b, pair.floors.a_vs_basis_b, "on B's activations"
    ref = runs[pair.a].reference
    return ref.floor_untrained, ref.floor_rotation, "A's store"


def histogram_figure(pair: PairResult, runs: list[RunEntry], path: Path) -> None:
    import matplotlib

    if "ipykernel" not in sys.modules:  # in a notebook the user's backend (inline) stays
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    a = runs[pair.a]
    untrained, basis, where = floors_of(pair, runs)
    curves = [
        (f"{a.label} vs {runs[pair.b].label}", pair.comparison, "C0", "-"),
        ("ceiling (seed twin)", a.reference.ceiling, "C2", "--"),
        (f"floor (untrained SAE, {where})", untrained, "C3", ":"),
        (f"floor (random basis, {where})", basis, "C7", ":"),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, field, title in (
        (axes[0], "max_a_to_b", "max correlation of each A latent"),
        (axes[1], "hungarian", "one-to-one matched correlation"),
    ):
        for name, comp, color, style in curves:
            if comp is None:
                continue
            dist = getattr(comp, field)
            edges = np.array(dist.hist_edges)
            counts = np.array(dist.hist_counts, dtype=float)
            share = counts / max(counts.sum(), 1.0)
            ax.step(edges[:-1], share, where="post", color=color, linestyle=style, label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("Pearson correlation")
        ax.set_ylabel("share of latents")
    axes[1].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomic(path, lambda fh: fig.savefig(fh, dpi=110, format="png"))
    finally:
        plt.close(fig)


def _contexts(pair: PairResult) -> list[str]:
    if not pair.contexts:
        return ["(no top contexts: the run's model could not be loaded to decode them)"]
    lines = ["| corr | A latent: top contexts | B latent: top contexts |", "|---|---|---|"]

    def cell(side) -> str:
        parts = [
            f"…{html.escape(before[-30:])}**{html.escape(token)}** ({act:.2f})".replace("|", "\\|").replace(
                "\n", "⏎"
            )
            for before, token, act in side.contexts[:3]
        ]
        return f"#{side.latent}: " + "<br>".join(parts)

    for c in pair.contexts:
        lines.append(f"| {c.corr:.3f} | {cell(c.a)} | {cell(c.b)} |")
    return lines


def _mean(c: Comparison | None, field: str = "hungarian") -> str:
    return "–" if c is None else _f(getattr(c, field).mean)


def _refs(pair: PairResult, runs: list[RunEntry], field: str) -> str:
    untrained, basis, _ = floors_of(pair, runs)
    return " / ".join(_mean(c, field) for c in (runs[pair.a].reference.ceiling, untrained, basis))


def summary_lines(results: CompareResults) -> list[str]:
    """One line per pair: mean max correlation (A -> B) beside A's ceiling and the pair's floors
    (and, for runs in different spaces, B -> A beside its floors on A's activations)."""
    runs = results.runs
    lines = []
    for pair in results.pairs:
        a, b, c = runs[pair.a], runs[pair.b], pair.comparison
        where = floors_of(pair, runs)[2]
        line = (
            f"{a.label} vs {b.label}: mean max corr {_mean(c, 'max_a_to_b')}, one-to-one {_mean(c)} "
            f"(A's ceiling / untrained floor / random-basis floor, floors {where}: max corr "
            f"{_refs(pair, runs, 'max_a_to_b')}, one-to-one {_refs(pair, runs, 'hungarian')}); "
        )
        if pair.floors is not None:
            f = pair.floors
            line += (
                f"B → A mean max corr {_mean(c, 'max_b_to_a')} (floors on A's activations: untrained "
                f"{_mean(f.untrained_a_vs_b, 'max_b_to_a')} / random basis "
                f"{_mean(f.basis_a_vs_b, 'max_b_to_a')}); "
            )
        lines.append(line + f"decoder RSA {_f(c.geometry.rsa)} (p={_p(c.geometry.p_value)})")
    return lines


def summary_table(results: CompareResults) -> list[str]:
    runs = results.runs
    lines = [
        "| A | B | mean max corr A→B | A's ceiling / untrained / random basis | one-to-one corr | "
        "A's ceiling / untrained / random basis | floors | share 1-to-1 > 0.7 (A's ceiling) | "
        "decoder RSA (p) | exact-effect corr [95% CI] (pairs) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for pair in results.pairs:
        a, b, c = runs[pair.a], runs[pair.b], pair.comparison
        eff = pair.effect_agreement
        ceiling = a.reference.ceiling
        ci = f" [{_f(eff.ci[0], 2)}, {_f(eff.ci[1], 2)}]" if eff.ci else ""
        lines.append(
            f"| {a.label} | {b.label} | {_mean(c, 'max_a_to_b')} | {_refs(pair, runs, 'max_a_to_b')} | "
            f"{_mean(c)} | {_refs(pair, runs, 'hungarian')} | {floors_of(pair, runs)[2]} | "
            f"{_f(c.hungarian.above_07)} "
            f"({_f(ceiling.hungarian.above_07) if ceiling else '–'}) | "
            f"{_f(c.geometry.rsa)} ({_p(c.geometry.p_value)}) | {_f(eff.pearson, 2)}{ci} ({eff.n_pairs}) |"
        )
    return lines


def write_report(results: CompareResults, out: Path) -> Path:
    runs = results.runs
    lines = [
        "## Feature comparison across runs",
        "",
        "Activation matching of SAE latents over shared text (Pearson correlation, streamed), with each "
        "run's ceiling (its SAE against a seed twin trained on the same store) and floors (an untrained "
        "SAE of the same architecture; a random orthonormal basis of the activation space) beside every "
        "number. For runs on different models, layers or sites the floors are measured in the pair's own "
        "spaces, on the pair's tokens: A's SAE against an untrained SAE of B's kind (or a random basis of "
        "B's space) applied to B's activations, and the reverse; each run's own-store floors are listed "
        "beside them for reference only. Decoder RSA: Spearman correlation of the matched pairs' decoder "
        "cosine-similarity matrices, p-value from a shuffled-pairing null.",
        "",
        "### Runs",
        "",
        "| # | run | SAE | d_model | d_sae | note |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(runs):
        note = (r.reference.note or "").replace("|", "\\|")
        lines.append(f"| {i} | {r.label} | {r.sae_variant} | {r.d_model} | {r.d_sae} | {note} |")
    lines += ["", "### Summary (normalised quantities only)", "", *summary_table(results), ""]
    for pair in results.pairs:
        a, b = runs[pair.a], runs[pair.b]
        c = pair.comparison
        lines += [
            f"### {a.label} vs {b.label}",
            "",
            f"Source: {c.source}, alignment: {c.alignment}, {c.n_tokens} paired tokens"
            + (
                f" ({pair.alignment_tokens_a} tokens of A, {pair.alignment_tokens_b} of B)"
                if c.source == "model"
                else ""
            )
            + f"; one-to-one solver: {c.hungarian_method}.",
            "",
            HEADER,
            _row(f"**{a.label} vs {b.label}**", c),
        ]
        own = ""
        if pair.floors is not None:
            f = pair.floors
            lines += [
                _row(f"floor (A → B): {a.label} vs untrained SAE on B's activations", f.a_vs_untrained_b),
                _row(f"floor (A → B): {a.label} vs random basis of B's space", f.a_vs_basis_b),
                _row(f"floor (B → A): untrained SAE on A's activations vs {b.label}", f.untrained_a_vs_b),
                _row(f"floor (B → A): random basis of A's space vs {b.label}", f.basis_a_vs_b),
            ]
            own = " (own store, another space)"
        _references(lines, a, "A", own)
        _references(lines, b, "B", own)
        figure = Path("figures") / f"pair{pair.a}-{pair.b}.png"
        histogram_figure(pair, runs, out / figure)
        lines += ["", f"![matched correlations against ceiling and floor]({figure.as_posix()})", ""]
        eff = pair.effect_agreement
        interval = f" [{_f(eff.ci[0])}, {_f(eff.ci[1])}]" if eff.ci else ""
        lines.append(
            f"Causal agreement: correlation of exact ablation effects over {eff.n_pairs} matched pairs "
            f"where both runs measured one: {_f(eff.pearson)}{interval}."
            + (
                f" None: {eff.note}."
                if eff.note
                else ""
                if eff.n_pairs >= 3
                else " Too few pairs for a correlation."
            )
        )
        for t in pair.top_k:
            lines.append(
                f"- top-{t.k} causal features of A matched into B's top-{t.k}: {t.matched_in_top_k} "
                f"(chance ≈ {t.expected_by_chance:.2f})"
            )
        lines += ["", "Matched pairs (one-to-one, highest correlation first):", ""]
        lines += ["| A latent | B latent | corr |", "|---|---|---|"]
        lines += [f"| {p.a} | {p.b} | {p.corr:.3f} |" for p in c.top_pairs[:10]]
        lines += ["", "Top contexts of matched features, side by side:", ""]
        lines += _contexts(pair)
        lines.append("")
    path = out / REPORT_FILE
    write_atomic(path, "\n".join(lines) + "\n")
    return path
