"""Stage 5: the report of one run directory, or a comparison of several.

``write_report([run_dir])`` writes ``report.md``, a self-contained ``report.html`` (figures embedded
as base64 PNG) and ``figures/*.png`` into the run directory. With several run directories it
writes one comparison table (FVU and CE loss recovered, never raw losses: they scale with the
activations' norm and cannot be compared across models) followed by each run's summary.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scircuits.platform.contract.errors import ConfigError

FIGURES_DIR = "figures"


@dataclass
class RunData:
    """Everything the report reads from one run directory."""

    path: Path
    results: dict[str, Any]
    sae_meta: dict[str, Any] = field(default_factory=dict)
    train_log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def provenance(self) -> dict[str, Any]:
        return self.results.get("provenance", {})

    def sae_metrics(self) -> dict[str, Any]:
        """FVU, L0, dead fraction: from training's held-out tokens when known, else the evaluation tokens."""
        metrics = self.sae_meta.get("metrics") if isinstance(self.sae_meta.get("metrics"), dict) else None
        if metrics and "fvu" in metrics:
            return {**metrics, "source": f"held-out store tokens ({metrics.get('split', 'eval')})"}
        return {**self.results.get("sae_metrics_eval", {}), "source": "evaluation tokens"}


def causal_dir(run_dir: Path) -> Path:
    return run_dir / "causal" if (run_dir / "causal" / "results.json").is_file() else run_dir


def load_run(run_dir: str | Path) -> RunData:
    path = Path(run_dir)
    results_path = causal_dir(path) / "results.json"
    if not results_path.is_file():
        raise ConfigError(
            f"{path} holds no causal/results.json: run `scircuits run` or `scircuits ablate` first"
        )
    try:
        results = json.loads(results_path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{results_path} is not valid JSON (line {exc.lineno}): {exc.msg}") from None
    sae_dir = Path(results.get("provenance", {}).get("sae", {}).get("path") or path / "sae")
    if not sae_dir.is_absolute() and not sae_dir.exists():
        sae_dir = path / "sae"
    meta: dict[str, Any] = {}
    if (sae_dir / "scircuits.json").is_file():
        meta = json.loads((sae_dir / "scircuits.json").read_text())
    log: list[dict[str, Any]] = []
    if (sae_dir / "train_log.jsonl").is_file():
        for line in (sae_dir / "train_log.jsonl").read_text().splitlines():
            if line.strip():
                try:
                    log.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
    return RunData(path, results, meta, log)


# ----------------------------------------------------------------------------- formatting


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and (abs(value) < 0.01 or abs(value) >= 10**6):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}f}"
    return str(value)


def fmt_ci(ci: Sequence[float] | None) -> str:
    return "–" if not ci else f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", "\\n") for c in row) + " |" for row in rows
    ]
    return "\n".join(lines)


def html_table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def show_token(token: str) -> str:
    return token.replace("\n", "⏎").replace("\t", "⇥")


# ----------------------------------------------------------------------------- figures


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def log_ticks(ax: Any, values: list[int]) -> None:
    """A log x axis labelled with the values themselves (1, 5, 20, ...)."""
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(values, [str(v) for v in values])


def figure_training(run: RunData) -> bytes | None:
    train = [r for r in run.train_log if "loss" in r and "eval" not in r]
    evals = [r for r in run.train_log if isinstance(r.get("eval"), dict) and "fvu" in r["eval"]]
    if not train and not evals:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if train:
        ax.plot(
            [r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", label="training loss"
        )
        ax.set_yscale("log")
        ax.set_ylabel("loss (normalised units)")
    ax.set_xlabel("step")
    if evals:
        ax2 = ax.twinx()
        steps = [r["step"] for r in evals]
        ax2.plot(steps, [r["eval"]["fvu"] for r in evals], "o-", color="tab:red", label="held-out FVU")
        if all("relative_error" in r["eval"] for r in evals):
            ax2.plot(
                steps,
                [r["eval"]["relative_error"] for r in evals],
                "s--",
                color="tab:orange",
                label="held-out relative error per token",
            )
        ax2.set_yscale("log")  # FVU spans decades; a linear axis hides its scale in an offset label
        ax2.set_ylabel("held-out metric (log)")
    ax.set_title("SAE training")
    fig.tight_layout()
    fig.subplots_adjust(bottom=0.3)
    fig.legend(loc="lower center", ncol=3, fontsize=7, frameon=False)
    return _png(fig)


def figure_sweeps(run: RunData, metric: str) -> bytes | None:
    sweeps = run.results.get("sweeps") or []
    if not sweeps:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ks = [s["k"] for s in sweeps]
    mean = [s[f"{metric}_delta"] for s in sweeps]
    low = [s[f"{metric}_delta"] - s[f"{metric}_ci"][0] for s in sweeps]
    high = [s[f"{metric}_ci"][1] - s[f"{metric}_delta"] for s in sweeps]
    ax.errorbar(
        ks,
        mean,
        yerr=[low, high],
        fmt="o-",
        capsize=3,
        label=f"top-k ({run.results.get('rank', {}).get('method', '')})",
    )
    controls = [s for s in sweeps if s.get("control")]
    if controls:
        c = [s["control"] for s in controls]
        ax.errorbar(
            [s["k"] for s in controls],
            [x[f"{metric}_delta"] for x in c],
            yerr=[
                [x[f"{metric}_delta"] - x[f"{metric}_ci"][0] for x in c],
                [x[f"{metric}_ci"][1] - x[f"{metric}_delta"] for x in c],
            ],
            fmt="s--",
            capsize=3,
            color="gray",
            label="random active features (control)",
        )
    ax.axhline(0, color="black", linewidth=0.5)
    log_ticks(ax, ks)
    ax.set_xlabel("features ablated (k)")
    ax.set_ylabel(f"Δ{metric} vs splice")
    ax.set_title(f"Ablating the top k features: Δ{metric} (95% bootstrap CI)")
    ax.legend(fontsize=8)
    return _png(fig)


def figure_faithfulness(run: RunData) -> bytes | None:
    points = [p for p in run.results.get("faithfulness") or [] if p.get("value") is not None]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot([p["n"] for p in points], [p["value"] for p in points], "o-")
    ax.axhline(1, color="gray", linestyle="--", linewidth=0.8)
    ax.axhline(0, color="black", linewidth=0.5)
    log_ticks(ax, [p["n"] for p in points])
    ax.set_xlabel("features kept (n), the rest mean-ablated")
    ax.set_ylabel("faithfulness")
    ax.set_title("Faithfulness (m(S) − m(∅)) / (m(all) − m(∅)), m = mean logprob")
    return _png(fig)


def figure_importance(run: RunData) -> bytes | None:
    feats = [f for f in run.results.get("features") or [] if f.get("exact_logprob_delta") is not None]
    if not feats:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    x = list(range(len(feats)))
    exact = [f["exact_logprob_delta"] for f in feats]
    err = [
        [f["exact_logprob_delta"] - f["exact_logprob_ci"][0] for f in feats],
        [f["exact_logprob_ci"][1] - f["exact_logprob_delta"] for f in feats],
    ]
    ax.bar([i - 0.2 for i in x], exact, width=0.4, yerr=err, capsize=2, label="exact ablation")
    ax.bar([i + 0.2 for i in x], [f["attribution"] for f in feats], width=0.4, label="attribution estimate")
    ax.set_xticks(x, [str(f["id"]) for f in feats], rotation=60, fontsize=7)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xlabel("feature")
    ax.set_ylabel("Δlogprob per example")
    rho = run.results.get("attribution_vs_exact_spearman")
    ax.set_title(f"Single-feature ablations (Spearman ρ = {fmt(rho, 2)})")
    ax.legend(fontsize=8)
    return _png(fig)


FIGURES = {
    "training": figure_training,
    "ablation_logprob": lambda run: figure_sweeps(run, "logprob"),
    "ablation_accuracy": lambda run: figure_sweeps(run, "accuracy"),
    "importance": figure_importance,
    "faithfulness": figure_faithfulness,
}


# ----------------------------------------------------------------------------- sections


def provenance_rows(run: RunData) -> list[list[Any]]:
    prov, res = run.provenance, run.results
    model, bench, store = prov.get("model", {}), prov.get("benchmark", {}), prov.get("store") or {}
    sae = prov.get("sae", {})
    return [
        ["model", f"{model.get('name')} ({model.get('model_id')})"],
        ["weights", model.get("revision")],
        ["layer / site", f"{res.get('layer')} / {res.get('site')}"],
        ["benchmark", f"{bench.get('name')} ({bench.get('split')})"],
        ["evaluation examples / tokens", f"{res.get('n_examples')} / {res.get('n_tokens')}"],
        [
            "activations",
            f"{store.get('source', '–')} store, {store.get('n_examples', '–')} examples, "
            f"{store.get('n_tokens', '–')} tokens ({store.get('benchmark', '–')} {store.get('split', '')})",
        ],
        [
            "SAE",
            f"{sae.get('variant')} d_sae={sae.get('d_sae')}, weights sha256 {str(sae.get('weights_sha256', '–'))[:16]}",
        ],
        ["created", f"{prov.get('created')} (scircuits {prov.get('scircuits_version')})"],
    ]


def metric_rows(run: RunData) -> list[list[Any]]:
    m, res = run.sae_metrics(), run.results
    rec, base, splice = res.get("reconstruction", {}), res.get("baseline", {}), res.get("splice", {})
    return [
        ["FVU", fmt(m.get("fvu")), m.get("source")],
        ["relative error per token (mean |x - x̂|² / |x|²)", fmt(m.get("relative_error")), m.get("source")],
        [
            "variance share of the largest dimension",
            fmt(m.get("top_dim_variance_share")),
            "FVU mostly measures that dimension when this is near 1",
        ],
        ["L0 (active latents per token)", fmt(m.get("l0"), 1), m.get("source")],
        ["dead fraction", fmt(m.get("dead_fraction")), m.get("source")],
        *[
            [f"FVU without the first {key.rsplit('_', 1)[1]} position(s)", fmt(value), "evaluation tokens"]
            for key, value in res.get("sae_metrics_eval", {}).items()
            if key.startswith("fvu_positions_from_")
        ],
        [
            "CE loss recovered",
            fmt(rec.get("ce_loss_recovered")),
            f"CE clean {fmt(rec.get('ce_loss_clean'))}, SAE {fmt(rec.get('ce_loss'))}, zeroed site {fmt(rec.get('ce_loss_zero_site'))}",
        ],
        [
            "accuracy: clean / SAE reconstruction / zeroed site",
            f"{fmt(base.get('accuracy'))} / {fmt(rec.get('accuracy'))} / {fmt(rec.get('zero_site_accuracy'))}",
            "benchmark examples",
        ],
        [
            "mean logprob: clean / SAE reconstruction",
            f"{fmt(base.get('logprob'))} / {fmt(rec.get('logprob'))}",
            "gold target",
        ],
        [
            "splice exactness (max |Δlogit|)",
            fmt(splice.get("max_abs_logit_diff")),
            f"SAE + error term via nnsight, {splice.get('examples_checked')} examples, tolerance {splice.get('tolerance')}",
        ],
    ]


def sweep_rows(run: RunData) -> list[list[Any]]:
    rows = []
    for s in run.results.get("sweeps") or []:
        c = s.get("control") or {}
        rows.append(
            [
                s["k"],
                s["ablation"],
                fmt(s["logprob_delta"]),
                fmt_ci(s["logprob_ci"]),
                fmt(c.get("logprob_delta")),
                fmt_ci(c.get("logprob_ci")),
                fmt(s.get("significant_logprob")),
                fmt(s["accuracy_delta"]),
                fmt_ci(s["accuracy_ci"]),
                fmt(c.get("accuracy_delta")),
                fmt_ci(c.get("accuracy_ci")),
                fmt(s.get("significant_accuracy")),
            ]
        )
    return rows


SWEEP_HEADER = [
    "k",
    "ablation",
    "Δlogprob",
    "95% CI",
    "control Δlogprob",
    "control CI",
    "significant",
    "Δaccuracy",
    "95% CI",
    "control Δacc",
    "control CI",
    "significant",
]


def importance_rows(run: RunData) -> list[list[Any]]:
    feats = [f for f in run.results.get("features") or [] if f.get("exact_logprob_delta") is not None]
    feats.sort(key=lambda f: f["exact_logprob_delta"])
    return [
        [
            i + 1,
            f["id"],
            fmt(f["exact_logprob_delta"]),
            fmt_ci(f["exact_logprob_ci"]),
            fmt(f["exact_accuracy_delta"]),
            fmt(f["attribution"]),
            fmt(f.get("mean_activation")),
            fmt(f.get("frequency")),
        ]
        for i, f in enumerate(feats)
    ]


IMPORTANCE_HEADER = [
    "rank",
    "feature",
    "exact Δlogprob",
    "95% CI",
    "exact Δaccuracy",
    "attribution",
    "mean activation",
    "firing frequency",
]


def findings(run: RunData) -> list[str]:
    res = run.results
    lines = []
    significant = [s for s in res.get("sweeps") or [] if s.get("significant_logprob")]
    if significant:
        best = min(significant, key=lambda s: s["logprob_delta"])
        lines.append(
            f"Ablating the top {best['k']} features ({best['ablation']}) changes the gold log-prob by "
            f"{fmt(best['logprob_delta'])} {fmt_ci(best['logprob_ci'])} per example, against "
            f"{fmt(best['control']['logprob_delta'])} {fmt_ci(best['control']['logprob_ci'])} for "
            f"{best['k']} random active features: the intervals do not overlap."
        )
    elif res.get("sweeps"):
        lines.append("No top-k ablation moved the log-prob with an interval that excludes the control's.")
    acc = [s for s in res.get("sweeps") or [] if s.get("significant_accuracy")]
    if acc:
        best = min(acc, key=lambda s: s["accuracy_delta"])
        lines.append(
            f"Accuracy: top {best['k']} ablated → {fmt(best['accuracy_delta'])} {fmt_ci(best['accuracy_ci'])} "
            f"vs control {fmt(best['control']['accuracy_delta'])} {fmt_ci(best['control']['accuracy_ci'])}."
        )
    rho = res.get("attribution_vs_exact_spearman")
    if rho is not None:
        lines.append(f"Attribution estimates vs exact single-feature ablations: Spearman ρ = {fmt(rho, 2)}.")
    return lines


def feature_md(feature: dict[str, Any]) -> str:
    lines = [
        f"#### Feature {feature['id']} (rank {feature['rank']})",
        f"attribution {fmt(feature['attribution'])}, exact Δlogprob {fmt(feature.get('exact_logprob_delta'))} "
        f"{fmt_ci(feature.get('exact_logprob_ci'))}, firing frequency {fmt(feature.get('frequency'))}",
        "",
    ]
    for ctx in feature.get("top_tokens", [])[:5]:
        parts = [
            f"**[{show_token(t)}]**" if i == ctx["focus"] else show_token(t)
            for i, (t, _) in enumerate(ctx["context"])
        ]
        lines.append(f"- {fmt(ctx['activation'])}: `" + "".join(parts).replace("`", "'") + "`")
    promoted = ", ".join(f"`{show_token(p['token'])}`" for p in feature.get("promoted", [])[:8])
    suppressed = ", ".join(f"`{show_token(p['token'])}`" for p in feature.get("suppressed", [])[:8])
    lines += ["", f"promotes: {promoted or '–'}", "", f"suppresses: {suppressed or '–'}", ""]
    return "\n".join(lines)


def feature_html(feature: dict[str, Any]) -> str:
    out = [
        f"<h4>Feature {feature['id']} (rank {feature['rank']})</h4>",
        f"<p>attribution {fmt(feature['attribution'])}, exact Δlogprob {fmt(feature.get('exact_logprob_delta'))} "
        f"{fmt_ci(feature.get('exact_logprob_ci'))}, firing frequency {fmt(feature.get('frequency'))}</p><ul>",
    ]
    for ctx in feature.get("top_tokens", [])[:5]:
        top = max((a for _, a in ctx["context"]), default=0.0) or 1.0
        spans = []
        for i, (token, act) in enumerate(ctx["context"]):
            alpha = max(0.0, min(1.0, act / top))
            border = "border-bottom:2px solid #000;" if i == ctx["focus"] else ""
            spans.append(
                f'<span class="tok" style="background:rgba(255,80,0,{alpha:.2f});{border}" '
                f'title="{act:.3g}">{html.escape(show_token(token))}</span>'
            )
        out.append(f"<li><code>{fmt(ctx['activation'])}</code> {''.join(spans)}</li>")
    out.append("</ul>")
    promoted = " ".join(
        f"<code>{html.escape(show_token(p['token']))}</code>" for p in feature.get("promoted", [])[:8]
    )
    suppressed = " ".join(
        f"<code>{html.escape(show_token(p['token']))}</code>" for p in feature.get("suppressed", [])[:8]
    )
    out.append(f"<p>promotes: {promoted or '–'}<br>suppresses: {suppressed or '–'}</p>")
    return "\n".join(out)


# ----------------------------------------------------------------------------- documents


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}
th{background:#f3f3f3}.tok{font-family:monospace;white-space:pre;padding:0 1px}img{max-width:100%}"""


class Document:
    """Builds the markdown and the HTML versions side by side."""

    def __init__(self, title: str, figures_dir: Path | None, figure_prefix: str = "") -> None:
        self.md: list[str] = [f"# {title}", ""]
        self.html: list[str] = [f"<h1>{html.escape(title)}</h1>"]
        self.figures_dir = figures_dir
        self.figure_prefix = figure_prefix
        self.written: list[Path] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.md += ["#" * level + " " + text, ""]
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str) -> None:
        self.md += [text, ""]
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        self.md += [md_table(header, rows), ""]
        self.html.append(html_table(header, rows))

    def figure(self, name: str, png: bytes | None, caption: str) -> None:
        if png is None:
            return
        file_name = f"{self.figure_prefix}{name}.png"
        if self.figures_dir is not None:
            self.figures_dir.mkdir(parents=True, exist_ok=True)
            (self.figures_dir / file_name).write_bytes(png)
            self.written.append(self.figures_dir / file_name)
        self.md += [f"![{caption}]({FIGURES_DIR}/{file_name})", ""]
        data = base64.b64encode(png).decode()
        self.html.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def raw(self, md: str, html_text: str) -> None:
        self.md += [md, ""]
        self.html.append(html_text)

    def write(self, out: Path, title: str) -> list[Path]:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text("\n".join(self.md))
        page = (
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(self.html)}</body></html>"
        )
        (out / "report.html").write_text(page)
        return [out / "report.md", out / "report.html", *self.written]


def run_sections(doc: Document, run: RunData, level: int = 2) -> None:
    doc.heading("Provenance", level)
    doc.table(["", ""], provenance_rows(run))
    doc.heading("Findings", level)
    for line in findings(run) or ["(no sweeps were run)"]:
        doc.paragraph(line)
    doc.heading("SAE quality", level)
    doc.table(["metric", "value", "measured on"], metric_rows(run))
    doc.figure("training", FIGURES["training"](run), "SAE training loss and held-out FVU")
    doc.heading("Ablation sweeps", level)
    doc.paragraph(
        "Effects are mean changes per example versus the unablated splice (SAE with its error term), "
        "with paired 95% bootstrap intervals over examples; the control ablates the same number of "
        "features drawn at random among those active on the benchmark. Significant: the intervals "
        "do not overlap."
    )
    doc.table(SWEEP_HEADER, sweep_rows(run))
    doc.figure(
        "ablation_logprob", FIGURES["ablation_logprob"](run), "Δlogprob when ablating the top k features"
    )
    doc.figure(
        "ablation_accuracy", FIGURES["ablation_accuracy"](run), "Δaccuracy when ablating the top k features"
    )
    doc.heading("Feature importance (exact single-feature ablations)", level)
    doc.table(IMPORTANCE_HEADER, importance_rows(run))
    doc.figure("importance", FIGURES["importance"](run), "exact vs attribution, per feature")
    doc.heading("Faithfulness", level)
    doc.table(
        ["n kept", "faithfulness", "mean logprob", "accuracy"],
        [
            [p["n"], fmt(p["value"]), fmt(p.get("logprob")), fmt(p.get("accuracy"))]
            for p in run.results.get("faithfulness") or []
        ],
    )
    doc.figure("faithfulness", FIGURES["faithfulness"](run), "faithfulness of keeping the top n features")
    doc.heading("Top features", level)
    doc.paragraph(
        f"Contexts from the {run.results.get('contexts_source', '?')} (tokens shaded by the feature's "
        f"activation, the top token underlined). Promoted/suppressed tokens: "
        f"{run.results.get('unembedding', '')}."
    )
    for feature in run.results.get("features") or []:
        doc.raw(feature_md(feature), feature_html(feature))


def comparison_rows(runs: Sequence[RunData]) -> list[list[Any]]:
    rows = []
    for run in runs:
        res, m = run.results, run.sae_metrics()
        sweeps = res.get("sweeps") or []
        best = min(sweeps, key=lambda s: s["logprob_delta"]) if sweeps else None
        rows.append(
            [
                res.get("provenance", {}).get("model", {}).get("name"),
                res.get("provenance", {}).get("benchmark", {}).get("name"),
                f"{res.get('site')}{res.get('layer')}",
                res.get("n_examples"),
                fmt(m.get("fvu")),
                fmt(m.get("l0"), 1),
                fmt(m.get("dead_fraction")),
                fmt(res.get("reconstruction", {}).get("ce_loss_recovered")),
                fmt(res.get("baseline", {}).get("accuracy")),
                f"top {best['k']}: {fmt(best['logprob_delta'])}" if best else "–",
                fmt(best["control"]["logprob_delta"]) if best and best.get("control") else "–",
                fmt(any(s.get("significant_logprob") for s in sweeps)),
                fmt(res.get("attribution_vs_exact_spearman"), 2),
            ]
        )
    return rows


COMPARISON_HEADER = [
    "model",
    "benchmark",
    "site",
    "examples",
    "FVU",
    "L0",
    "dead fraction",
    "CE loss recovered",
    "accuracy",
    "largest Δlogprob",
    "control",
    "significant",
    "Spearman ρ",
]


def write_report(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> list[Path]:
    """Write the report of one run (into it, unless ``out``) or the comparison of several (into ``out``,
    default ``./report``); returns the files written."""
    if not run_dirs:
        raise ConfigError("give at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    if len(runs) == 1:
        run = runs[0]
        target = Path(out) if out is not None else run.path
        title = (
            f"scircuits: {run.provenance.get('model', {}).get('name')} on "
            f"{run.provenance.get('benchmark', {}).get('name')}, {run.results.get('site')} layer {run.results.get('layer')}"
        )
        doc = Document(title, target / FIGURES_DIR)
        run_sections(doc, run)
        return doc.write(target, title)
    target = Path(out) if out is not None else Path("report")
    title = f"scircuits: comparison of {len(runs)} runs"
    doc = Document(title, target / FIGURES_DIR)
    doc.heading("Comparison")
    doc.paragraph(
        "FVU and CE loss recovered compare SAEs across models; raw reconstruction losses do not (they "
        "scale with each model's activation norm). Δlogprob: the top-k ablation with the largest drop, "
        "per example, against the same number of random active features."
    )
    doc.table(COMPARISON_HEADER, comparison_rows(runs))
    for run in runs:
        doc.heading(run.name)
        doc.figure_prefix = f"{run.name}__"
        run_sections(doc, run, level=3)
    return doc.write(target, title)
