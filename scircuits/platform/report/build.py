"""The report of one run directory, or a comparison of several.

``write_report([run_dir], plugins)`` writes ``report.md``, a self-contained ``report.html`` (figures
embedded as base64 PNG) and ``figures/*.png`` into the run directory: provenance, the findings of
every analysis, then each analysis's own section in the order the study ran them. With several run
directories it writes one comparison table (FVU and CE loss recovered, never raw losses: they scale
with the activations' norm and cannot be compared across models) followed by each run's sections.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scircuits.platform.causal.registry import analyses_of
from scircuits.platform.causal.results import other_sae_than_measured, read_results, results_path
from scircuits.platform.common.artifacts import (
    FORCE_HINT,
    GROUP_LOCK_FILE,
    LOCK_FILE,
    ArtifactError,
    FolderLock,
    check_can_create,
    check_distinct,
    check_local,
    check_out_apart,
    check_writable,
    claim,
    held_here,
    only_bookkeeping,
    read_lock,
    read_marker,
    write_marker,
)
from scircuits.platform.common.logs import get_logger
from scircuits.platform.contract.analyses import Analysis
from scircuits.platform.contract.errors import ConfigError, ScircuitsError
from scircuits.platform.contract.study import StudyResults
from scircuits.platform.report.circuit import circuit_section
from scircuits.platform.report.document import FIGURES_DIR, REPORT_HTML, REPORT_MD, ReportDocument, fmt

log = get_logger(__name__)
RUN_PARTS = ("causal", "sae", "activations.zarr", "circuit", "dashboard", "figures")  # a run's parts

CAUSAL_DIR = "causal"


@dataclass
class RunData:
    """Everything the report reads from one run directory."""

    path: Path
    results: StudyResults
    sae_meta: dict[str, Any] = field(default_factory=dict)
    train_log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def provenance(self) -> dict[str, Any]:
        return self.results.provenance

    def sae_metrics(self, results: Any = None) -> dict[str, Any]:
        """FVU, L0, dead fraction: from training's held-out tokens when known, else the evaluation tokens."""
        metrics = self.sae_meta.get("metrics") if isinstance(self.sae_meta.get("metrics"), dict) else None
        if metrics and "fvu" in metrics:
            return {**metrics, "source": f"held-out store tokens ({metrics.get('split', 'eval')})"}
        return {**self.results.analysis_fields().get("sae_metrics_eval", {}), "source": "evaluation tokens"}


def causal_dir(run_dir: Path) -> Path:
    return run_dir / CAUSAL_DIR if results_path(run_dir / CAUSAL_DIR).is_file() else run_dir


def sae_folder(run_dir: Path, results: StudyResults) -> Path:
    """The run's SAE folder: where provenance says it was, else ``sae/`` beside the results (a moved run)."""
    recorded = (results.provenance.get("sae") or {}).get("path")
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    return run_dir / "sae"


def check_not_causal(path: Path) -> None:
    """ConfigError for the causal folder of a run: the report belongs in the run directory."""
    if path.name == CAUSAL_DIR and results_path(path).is_file():
        run = path.parent
        if read_marker(run) is not None or results_path(run / CAUSAL_DIR).is_file():
            raise ConfigError(
                f"{path} is the causal folder of the run {run}, not a run directory: give the run "
                f"(`scircuits report {run}`)"
            )


def load_run(run_dir: str | Path, analyses: Sequence[Analysis] = ()) -> RunData:
    path = Path(run_dir)
    check_not_causal(path)
    if not results_path(causal_dir(path)).is_file():
        raise ConfigError(
            f"{path} holds no causal/results.json: run `scircuits run` or `scircuits ablate` first"
        )
    results = read_results(causal_dir(path), analyses)
    sae_dir = sae_folder(path, results)
    other = other_sae_than_measured(results.model_dump(mode="python"), sae_dir)
    if other is not None:
        log.warning(f"warning: {other}")
    meta: dict[str, Any] = {}
    if (sae_dir / "scircuits.json").is_file():
        meta = json.loads((sae_dir / "scircuits.json").read_text())
    train_log: list[dict[str, Any]] = []
    if (sae_dir / "train_log.jsonl").is_file():
        for line in (sae_dir / "train_log.jsonl").read_text().splitlines():
            if line.strip():
                try:
                    train_log.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
    return RunData(path, results, meta, train_log)


# ----------------------------------------------------------------------------- run-level parts


def figure_training(run: RunData) -> bytes | None:
    train = [r for r in run.train_log if "loss" in r and "eval" not in r]
    evals = [r for r in run.train_log if isinstance(r.get("eval"), dict) and "fvu" in r["eval"]]
    if not train and not evals:
        return None
    plt = ReportDocument.pyplot()
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
    return ReportDocument.png(fig)


def benchmark_row(bench: dict[str, Any]) -> str:
    """ "gsm8k (test), mode cot-none": the benchmark, its split and its label (`Benchmark.label`) if any."""
    label = bench.get("label")
    return f"{bench.get('name')} ({bench.get('split')})" + (f", mode {label}" if label else "")


def provenance_rows(run: RunData) -> list[list[Any]]:
    prov, res = run.provenance, run.results
    model, bench, store = prov.get("model", {}), prov.get("benchmark", {}), prov.get("store") or {}
    sae = prov.get("sae", {})
    return [
        ["model", f"{model.get('name')} ({model.get('model_id')})"],
        ["weights", model.get("revision")],
        ["layer / site", f"{res.layer} / {res.site}"],
        ["benchmark", benchmark_row(bench)],
        ["evaluation examples / tokens", f"{res.n_examples} / {res.n_tokens}"],
        ["score per example", res.score or "gold log-prob (recorded before the score was named)"],
        [
            "activations",
            f"{store.get('source', '–')} store, {store.get('n_examples', '–')} examples, "
            f"{store.get('n_tokens', '–')} tokens ({store.get('benchmark', '–')} {store.get('split', '')})",
        ],
        [
            "SAE",
            f"{sae.get('variant')} d_sae={sae.get('d_sae')}, "
            f"weights sha256 {str(sae.get('weights_sha256', '–'))[:16]}",
        ],
        ["created", f"{prov.get('created')} (scircuits {prov.get('scircuits_version')})"],
    ]


def ran(run: RunData, analyses: Sequence[Analysis]) -> list[tuple[Analysis | None, str, Any]]:
    """(analysis, name, typed result) for each analysis of the run, in run order; analysis None
    when no installed plugin provides it."""
    by_name = {a.name: a for a in analyses}
    out = []
    for name in run.results.analyses:
        analysis = by_name.get(name)
        out.append((analysis, name, run.results.result_of(analysis) if analysis else None))
    return out


def drawn(analysis: Analysis, what: str, draw: Any, failed: Any = None) -> Any:
    """What a plugin analysis's ``draw`` returns; when it raises, a warning naming the analysis and
    ``failed``, so that one broken section leaves the rest of the report (a built-in's error is ours:
    raised)."""
    try:
        return draw()
    except (ScircuitsError, KeyboardInterrupt):
        raise
    except Exception as exc:
        if type(analysis).__module__.startswith("scircuits."):
            raise
        log.warning(
            f"warning: analysis {analysis.name!r} ({type(analysis).__module__}): its {what} failed "
            f"({type(exc).__name__}: {exc}); the report says so in its place"
        )
        return failed


def run_sections(doc: ReportDocument, run: RunData, analyses: Sequence[Analysis], level: int = 2) -> None:
    doc.describe_run(run.sae_metrics, lambda: figure_training(run), level, doc.figure_prefix)
    done = ran(run, analyses)
    doc.heading("Provenance")
    doc.table(["", ""], provenance_rows(run))
    doc.heading("Findings")
    lines = [
        line
        for a, _, r in done
        if a is not None
        for line in drawn(a, "findings", lambda a=a, r=r: a.findings(doc, r, run.results)) or []
    ]
    for line in lines or ["(no findings)"]:
        doc.paragraph(line)
    for analysis, name, result in done:
        if analysis is None:
            doc.heading(name)
            doc.paragraph(f"(analysis {name!r} ran, but no installed plugin provides it: not shown)")
            continue
        failed = object()
        section = drawn(
            analysis, "report section", lambda a=analysis, r=result: a.report(doc, r, run.results), failed
        )
        if section is failed:
            doc.paragraph(f"(analysis {name!r} could not draw its section; its results are in results.json)")
    circuit_section(doc, run.path)  # when the run holds a circuit (RUN/circuit)


def comparison_table(
    doc: ReportDocument, runs: Sequence[RunData], analyses: Sequence[Analysis]
) -> tuple[list[str], list[list[Any]]]:
    header = ["run", "model", "benchmark", "site", "examples", "FVU", "L0", "dead fraction", "rare fraction"]
    columns: list[dict[str, str]] = []
    for run, label in zip(runs, run_labels(runs), strict=True):
        res, m = run.results, run.sae_metrics()
        row = {
            "run": label,
            "model": res.provenance.get("model", {}).get("name"),
            "benchmark": res.provenance.get("benchmark", {}).get("name"),
            "site": f"{res.site}{res.layer}",
            "examples": res.n_examples,
            "FVU": fmt(m.get("fvu")),
            "L0": fmt(m.get("l0"), 1),
            "dead fraction": fmt(m.get("dead_fraction")),
            "rare fraction": fmt(m.get("rare_fraction")),
        }
        for analysis, _, result in ran(run, analyses):
            if analysis is not None:
                for key, value in analysis.comparison(doc, result).items():
                    row[key] = value
                    if key not in header:
                        header.append(key)
        columns.append(row)
    return header, [[row.get(h, "–") for h in header] for row in columns]


def write_report(
    run_dirs: Sequence[str | Path], plugins: Any, out: str | Path | None = None, force: bool = False
) -> list[Path]:
    """Write the report of one run (into it, unless ``out``) or the comparison of several (into ``out``,
    default ``./report``); returns the files written. An ``out`` holding another run, or the report of
    other runs, or anything else scircuits did not write there, is refused, or with ``force`` moved
    aside (:func:`claim_target`)."""
    if not run_dirs:
        raise ConfigError("give at least one run directory")
    for run_dir in run_dirs:
        check_local(run_dir, "run directory", "report")
    check_local(out, "--out", "report")
    analyses = list(analyses_of(plugins))
    runs = [load_run(d, analyses) for d in run_dirs]
    check_distinct([run.path for run in runs], "report")
    target = Path(out) if out is not None else runs[0].path if len(runs) == 1 else Path("report")
    check_target(target, runs)
    with report_lock(target, runs):
        return write_locked(target, runs, analyses, force)


@contextlib.contextmanager
def report_lock(target: Path, runs: Sequence[RunData]) -> Iterator[None]:
    """While a report is written: ``target`` locked as every command locks the folder it writes (a
    second `scircuits report` of it, or a `run` writing it, is refused at once in one line; nothing of
    this process's own ``run`` is waited for), and each other run read under its reader's lock."""
    own = len(runs) == 1 and target.resolve() == runs[0].path.resolve()
    with contextlib.ExitStack() as held:
        if not held_here(target):
            held.enter_context(FolderLock(target, "run directory" if own else "report", option="--out"))
        for run in runs:
            if run.path.resolve() != target.resolve():
                lock = read_lock(run.path, "run")
                if lock is not None:
                    held.callback(lock.release)
        yield


def write_locked(
    target: Path, runs: Sequence[RunData], analyses: Sequence[Analysis], force: bool
) -> list[Path]:
    if len(runs) == 1:
        run = runs[0]
        target = claim_target(target, runs, force)
        title = (
            f"scircuits: {run.provenance.get('model', {}).get('name')} on "
            f"{run.provenance.get('benchmark', {}).get('name')}, {run.results.site} layer {run.results.layer}"
        )
        doc = ReportDocument(title, target / FIGURES_DIR)
        run_sections(doc, run, analyses)
        return doc.write(target, title)
    target = claim_target(target, runs, force)
    title = f"scircuits: comparison of {len(runs)} runs"
    doc = ReportDocument(title, target / FIGURES_DIR)
    doc.heading("Comparison")
    doc.paragraph(
        "FVU and CE loss recovered compare SAEs across models; raw reconstruction losses do not (they "
        "scale with each model's activation norm). Δlogprob: the top-k ablation with the largest drop, "
        "per example, against the same number of random active features."
    )
    doc.table(*comparison_table(doc, runs, analyses))
    for run, label in zip(runs, run_labels(runs), strict=True):
        doc.heading(label, level=2)
        doc.figure_prefix = f"{label.replace('/', '__')}__"
        run_sections(doc, run, analyses, level=3)
    return doc.write(target, title)


def run_labels(runs: Sequence[RunData]) -> list[str]:
    """Each run's folder name, with as many parent folders as tell runs of one name apart (two runs of
    one model, benchmark and site under different --out); the index first if even their paths agree."""
    for depth in range(1, 5):
        labels = ["/".join(run.path.resolve().parts[-depth:]) for run in runs]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{i + 1}. {run.name}" for i, run in enumerate(runs)]


def report_identity(runs: Sequence[RunData]) -> str:
    """A report folder's marker identity: the resolved paths of its runs, in order."""
    return json.dumps([str(run.path.resolve()) for run in runs])


def is_run_dir(folder: Path) -> bool:
    marker = read_marker(folder)
    return (marker is not None and marker.kind == "run") or results_path(folder / CAUSAL_DIR).is_file()


def claim_target(target: Path, runs: Sequence[RunData], force: bool = False) -> Path:
    """``target`` checked writable and made the report's home: the run's own directory (one run) as it
    is; another run's directory, another artifact, or the report of other runs refused (ArtifactError);
    a report folder of an earlier version (no marker) adopted; a new folder marked ``report``. With
    ``force`` what is refused is moved aside instead (never a run directory)."""
    if len(runs) == 1 and target.resolve() == runs[0].path.resolve():
        check_writable(target)
        check_can_create(target / FIGURES_DIR)
        return target
    check_target(target, runs)
    identity = report_identity(runs)
    if read_marker(target) is None and _is_report(target):
        write_marker(target, REPORT_KIND, identity)
    if not force:
        refuse_other(target, identity)
    claimed = claim(target, REPORT_KIND, identity, force=force)
    if claimed.moved_to is not None:
        log.info(f"[report] --force: {target} held other files; moved them to {claimed.moved_to}")
    check_writable(target)
    check_can_create(target / FIGURES_DIR)
    return target


def check_target(target: Path, runs: Sequence[RunData]) -> None:
    """The refusals of :func:`claim_target` that change nothing, made before the target is locked:
    another run's directory, a folder holding (or inside) what a run is made of, a file."""
    if len(runs) == 1 and target.resolve() == runs[0].path.resolve():
        return
    if is_run_dir(target):
        raise ArtifactError(
            f"--out {target} is the run directory of another run, whose report it holds: choose another "
            f"--out (`scircuits report {target}` rewrites that run's own)"
        )
    # never into (or holding) what a run is made of: --force would move it aside
    check_out_apart(target, read=[run.path / part for run in runs for part in RUN_PARTS])
    if target.exists() and not target.is_dir():
        raise ArtifactError(f"--out {target} is a file, not a folder: choose another --out")


def refuse_other(target: Path, identity: str) -> None:
    """ArtifactError when ``target`` holds anything but this report: files scircuits did not write,
    another kind of artifact, or the report of other runs."""
    marker = read_marker(target)
    if marker is None:
        if only_bookkeeping(target):
            return
        shown = ", ".join(sorted(p.name for p in target.iterdir() if p.name not in LOCKS)[:3])
        raise ArtifactError(
            f"--out {target} holds files scircuits did not write ({shown}...): it will not overwrite "
            f"them; choose another --out, move them away, {FORCE_HINT}"
        )
    if marker.kind != REPORT_KIND:
        raise ArtifactError(
            f"--out {target} holds a {marker.kind} artifact, not a report: choose another --out, {FORCE_HINT}"
        )
    if marker.identity != identity:
        raise ArtifactError(
            f"--out {target} holds the report of other runs ({', '.join(report_runs(marker.identity))}): "
            f"choose another --out, {FORCE_HINT}"
        )


def report_runs(identity: str) -> list[str]:
    try:
        runs = json.loads(identity)
    except ValueError:
        return [identity]
    return [str(r) for r in runs] if isinstance(runs, list) else [identity]


REPORT_KIND = "report"
LOCKS = (LOCK_FILE, GROUP_LOCK_FILE)  # a folder's lock files (taken while the report is written)


def _is_report(folder: Path) -> bool:
    """An unmarked folder holding only what an earlier version of this command wrote."""
    names = {p.name for p in folder.iterdir() if p.name not in LOCKS} if folder.is_dir() else set()
    if REPORT_MD not in names or not names <= {REPORT_MD, REPORT_HTML, FIGURES_DIR}:
        return False
    try:
        return (folder / REPORT_MD).read_text().startswith("# scircuits: ")
    except (OSError, UnicodeDecodeError):
        return False
