"""Build a run's dashboard: scan the store through the SAE, describe each active feature, write the site.

summary = build_dashboard("runs/smollm2-135m__arithmetic__resid15", plugins)   # -> RUN_DIR/dashboard/
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scircuits.platform.common.artifacts import (
    FORCE_HINT,
    ArtifactError,
    FolderLock,
    check_local,
    check_out_apart,
    check_writable,
    claim,
    only_bookkeeping,
    read_lock,
    read_marker,
    remove_orphans,
    write_marker,
)
from scircuits.platform.common.artifacts import describe_os_error as describe
from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.dashboard import sources
from scircuits.platform.dashboard.circuit_page import CircuitPage, circuit_page
from scircuits.platform.dashboard.matches import (
    COMPARISONS_FILE,
    check_compare_dirs,
    recorded_compare_dirs,
    refresh_matches,
    refresh_partners,
)
from scircuits.platform.dashboard.scan import (
    HIST_BINS_PER_DECADE,
    HIST_LOG10_MIN,
    N_HIST,
    Runs,
    Scan,
    ScanSettings,
    Window,
    fill_windows,
    make_windows,
    scan_store,
)
from scircuits.platform.dashboard.schema import (
    Ablation,
    Context,
    FeaturePage,
    Histogram,
    LogitEffect,
    QuantileGroup,
)
from scircuits.platform.dashboard.site import link_from_report, write_site

DASHBOARD_DIR = "dashboard"
LOGIT_CHUNK = 256  # features per unembedding product (chunk x vocab floats at once)


@dataclass
class DashboardSummary:
    out: Path
    d_sae: int
    n_active: int
    n_pages: int
    n_tokens: int
    seconds: float
    size_bytes: int
    n_files: int
    n_comparisons: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    circuit: Path | None = None  # the circuit page, when the site draws one


@dataclass
class Extracted:
    """Everything the site and the export are written from."""

    inputs: sources.RunInputs
    pages: list[FeaturePage]
    examples: dict[int, list[str]]  # run index -> the sequence's tokens, decoded one by one
    d_sae: int
    n_active: int
    n_tokens: int
    n_sequences: int  # traced sequences in the store
    neuron_alignment: dict[int, tuple[list[int], list[float], list[float]]]
    circuit: CircuitPage | None = None  # the circuit page's content, when the site draws a circuit


def histogram(counts: np.ndarray) -> Histogram:
    edges = 10.0 ** (HIST_LOG10_MIN + (np.arange(N_HIST + 1) - 1) / HIST_BINS_PER_DECADE)
    nonzero = np.flatnonzero(counts)
    if nonzero.size == 0:
        return Histogram(edges=[], counts=[])
    lo, hi = int(nonzero[0]), int(nonzero[-1])
    return Histogram(
        edges=[float(e) for e in edges[lo : hi + 2]], counts=[int(c) for c in counts[lo : hi + 1]]
    )


def feature_order(results: dict[str, Any], scan: Scan) -> list[int]:
    """Active features: those results.json ranks first (in its order), then by firing count."""
    active = scan.counts > 0
    ranked = [int(f["id"]) for f in results.get("features", [])]
    ranked += [int(i) for i in (results.get("rank") or {}).get("top", [])]
    seen: set[int] = set()
    order = [i for i in ranked if 0 <= i < active.size and active[i] and not (i in seen or seen.add(i))]
    rest = np.flatnonzero(active)
    rest = rest[np.argsort(-scan.counts[rest], kind="stable")]
    return order + [int(i) for i in rest if int(i) not in seen]


def quantile_picks(
    sample: list[tuple[int, float]], settings: ScanSettings, exclude: set[int]
) -> list[tuple[int, int, float, float, float, list[tuple[int, float]]]]:
    """(band, of, min, max, fraction, picks) per quantile band of the sample, highest band first."""
    if not sample:
        return []
    bands = [b for b in np.array_split(np.arange(len(sample)), settings.n_quantiles) if b.size]
    out = []
    for number, band in enumerate(bands, start=1):
        spots = np.unique(np.linspace(0, band.size - 1, settings.per_quantile).round().astype(int))
        picks = [sample[band[s]] for s in spots if sample[band[s]][0] not in exclude]
        values = [sample[i][1] for i in band]
        out.append((number, len(bands), min(values), max(values), band.size / len(sample), picks))
    return out[::-1]


def build_dashboard(
    run_dir: str | Path,
    plugins: Any,
    *,
    features: int | None = None,
    out: str | Path | None = None,
    settings: ScanSettings | None = None,
    say: Callable[[str], None] | None = None,
    compare: Sequence[str | Path] = (),
    force: bool = False,
    store: str | Path | None = None,
    circuit: str | Path | None = None,
    model_path: str | Path | None = None,
) -> DashboardSummary:
    """Write RUN_DIR/dashboard (or ``out``): index, one page per active feature, the Neuronpedia export,
    and the matched features of ``compare`` folders (plus those a previous build of the site recorded).

    The site folder follows the artifact rule (``scircuits.platform.common.artifacts``): files
    scircuits did not write are refused (moved aside with ``force``), never deleted; an ``out`` that
    is, or holds, what the dashboard reads is refused; the folder is locked while it is written, and
    the run is read under its lock (refused while `scircuits run` writes it). ``store`` scans that
    store instead of the run's (``sources.read_run``). ``circuit``: a `scircuits circuit` folder to draw
    on circuit.html (default: RUN/circuit when it holds one). ``model_path``: load the run's model from
    this folder (the one it recorded moved); its weights must be those the run recorded."""
    if features is not None and features <= 0:
        raise ConfigError(f"--features must be a positive number, not {features}")
    for option, value in [
        ("run directory", run_dir),
        ("--out", out),
        ("--store", store),
        ("--circuit", circuit),
        ("--model-path", model_path),
    ]:
        check_local(value, option, "dashboard")
    for folder in compare:
        check_local(folder, "--compare", "dashboard")
    started = time.monotonic()
    timings: dict[str, float] = {}
    settings = settings or ScanSettings()
    say = say or (lambda _: None)
    inputs = sources.read_run(run_dir, plugins, store)
    sources.locate_model(inputs, plugins, model_path)  # before any work: a moved folder costs nothing
    default = inputs.run_dir / DASHBOARD_DIR
    read = [(inputs.run_dir / sources.RESULTS).parent, inputs.store_path]
    read += [inputs.sae_path] if isinstance(inputs.sae_path, Path) else []
    circuit_folder = sources.circuit_dir(inputs.run_dir, circuit)
    read += [circuit_folder] if circuit_folder is not None else []
    target = check_out_apart(
        out if out is not None else default, read=[*read, *(Path(c) for c in compare)], holds=[inputs.run_dir]
    )
    in_run = target == default.resolve()
    existed = target.exists()
    with FolderLock(target, "dashboard", option="--out"):
        run_lock = None
        try:
            run_lock = read_lock(inputs.run_dir, "run")
            own = check_owner(target, inputs.run_dir, in_run, force)
            check_writable(target)
            recorded = recorded_compare_dirs(target, inputs.run_dir, say) if own else []
            compare_dirs = [*recorded, *(Path(c) for c in compare)]
            check_out_apart(target, read=compare_dirs)
            check_compare_dirs(compare_dirs, inputs.run_dir)  # before the scan: a bad folder costs nothing
            circuit_results = None
            if circuit_folder is not None:  # before the scan: a bad circuit costs nothing
                circuit_results = sources.read_circuit_for(circuit_folder, inputs)
            claim_site(target, inputs.run_dir, own, force, say)
            sources.collect_store(inputs, plugins, say)  # a run of a given SAE: its evaluation examples
            extracted = extract(inputs, plugins, settings, features, timings, say)
            if circuit_folder is not None and circuit_results is not None:
                extracted.circuit = circuit_page(
                    circuit_folder,
                    circuit_results,
                    sources.site_of_run_sae(circuit_results, inputs),
                    {p.id for p in extracted.pages},
                    f"{inputs.site}{inputs.layer}",
                )
            t0 = time.monotonic()
            write_site(target, extracted)  # with the Neuronpedia export in neuronpedia/
            stale = not compare_dirs and (target / COMPARISONS_FILE).is_file()  # its record drops them
            n_comparisons = (
                refresh_matches(target, inputs.run_dir, compare_dirs, warn=False)
                if compare_dirs or stale
                else 0
            )
            if compare_dirs and in_run:
                refresh_partners(compare_dirs, inputs.run_dir, say)
            timings["write"] = round(time.monotonic() - t0, 2)
            if out is None or in_run:
                remove_orphans(inputs.run_dir, prefix=".report.")
                try:
                    link_from_report(inputs.run_dir, target)
                except OSError as exc:
                    say(f"the report in {inputs.run_dir} does not link to the dashboard ({describe(exc)})")
        except BaseException:
            if not existed and only_bookkeeping(target):  # a failed first build leaves no folder
                shutil.rmtree(target, ignore_errors=True)
            raise
        finally:
            if run_lock is not None:
                run_lock.release()
    files = [p for p in target.rglob("*") if p.is_file() and not p.name.startswith(".")]
    return DashboardSummary(
        out=target,
        d_sae=extracted.d_sae,
        n_active=extracted.n_active,
        n_pages=len(extracted.pages),
        n_tokens=extracted.n_tokens,
        seconds=round(time.monotonic() - started, 1),
        size_bytes=sum(p.stat().st_size for p in files),
        n_files=len(files),
        n_comparisons=n_comparisons,
        timings=timings,
        circuit=target / "circuit.html" if extracted.circuit is not None else None,
    )


def claim_site(target: Path, run_dir: Path, own: bool, force: bool, say: Callable[[str], None]) -> None:
    """Make ``target`` the site's folder: this run's site (``own``, see :func:`check_owner`), also one
    an earlier version wrote, keeps its entries; stale temporaries of dead builds are removed;
    anything else is refused (or, with ``force``, moved aside)."""
    remove_orphans(target)
    remove_orphans(target.parent, prefix=f".{target.name}.tmp-")  # where earlier versions staged
    identity = site_identity(run_dir)
    if own and is_site(target):
        write_marker(target, SITE_KIND, identity)
    claimed = claim(target, SITE_KIND, identity, option="--out", force=force)
    if claimed.moved_to is not None:
        say(f"{target} held what is not this run's dashboard; moved it to {claimed.moved_to}")


SITE_KIND = "dashboard"


def site_identity(run_dir: Path) -> str:
    """A dashboard folder's marker identity: the resolved path of the run it shows."""
    return str(run_dir.resolve())


def is_site(folder: Path) -> bool:
    """A dashboard's folder: its marker says so, or (an earlier version's, unmarked) its manifest."""
    marker = read_marker(folder)
    return marker.kind == SITE_KIND if marker is not None else _is_site(folder)


def site_owner(target: Path) -> str | None:
    """The run whose dashboard ``target`` holds: its marker's identity, or for a site of an earlier
    version (no marker, or identity "dashboard") the absolute run path its manifest names; else None."""
    marker = read_marker(target)
    if marker is not None and marker.identity != SITE_KIND:
        return marker.identity
    recorded = _manifest(target).get("run_dir")
    if isinstance(recorded, str) and Path(recorded).is_absolute():
        return str(Path(recorded).resolve())
    return None


def check_owner(target: Path, run_dir: Path, in_run: bool, force: bool) -> bool:
    """False when ``target`` holds the dashboard of another run and ``force`` moves it aside; refused
    (ArtifactError) without ``force``. The run's own folder (``in_run``) is always its own."""
    if in_run or not is_site(target):
        return True
    owner = site_owner(target)
    if owner == site_identity(run_dir):
        return True
    if owner is None:
        recorded = _manifest(target).get("results_config_hash")
        if recorded is not None and recorded == read_config_hash(run_dir):
            return True  # an earlier version's site naming its run by a relative path: the same results
    if force:
        return False
    whose = f"the run {owner}" if owner is not None else "a run it does not name"
    raise ArtifactError(
        f"{target} holds the dashboard of {whose}, not of {run_dir}: choose another --out, {FORCE_HINT}"
    )


def read_config_hash(run_dir: Path) -> str | None:
    try:
        value = json.loads((run_dir / sources.RESULTS).read_text()).get("config_hash")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _is_site(folder: Path) -> bool:
    return _manifest(folder).get("format") == "scircuits.dashboard"


def extract(
    inputs: sources.RunInputs,
    plugins: Any,
    settings: ScanSettings,
    max_features: int | None,
    timings: dict[str, float],
    say: Callable[[str], None],
) -> Extracted:
    t0 = time.monotonic()
    store = sources.open_store(inputs)
    sae = sources.load_sae(inputs, plugins)
    d_in, d_sae = int(sae.W_dec.shape[1]), int(sae.W_dec.shape[0])
    if d_in != store.d_model:
        raise ConfigError(
            f"the SAE in {inputs.sae_path} reads width {d_in}, the store {inputs.store_path} holds "
            f"width {store.d_model}: they are not from the same run"
        )
    positions, example_ids = store.positions, store.example_ids
    say(f"scanning {store.n_tokens} tokens through {d_sae} latents")
    scan = scan_store(sae, store.read_rows, positions, store.n_tokens, inputs.first_position, settings)
    timings["scan"] = round(time.monotonic() - t0, 2)

    order = feature_order(inputs.results, scan)
    chosen = order[:max_features] if max_features else order
    t0 = time.monotonic()
    runs = Runs.of(example_ids)
    top = {f: scan.top(f) for f in chosen}
    bands = {f: quantile_picks(scan.sample(f), settings, {r for r, _ in top[f]}) for f in chosen}
    requests = [(f, r) for f in chosen for r, _ in top[f]]
    requests += [(f, r) for f in chosen for band in bands[f] for r, _ in band[5]]
    windows = make_windows(requests, runs, settings)
    fill_windows(
        sae, store.read_rows, windows, settings.rows_per_block(d_sae), positions < inputs.first_position
    )
    by_request = {(w.latent, w.row): w for w in windows}
    timings["contexts"] = round(time.monotonic() - t0, 2)

    t0 = time.monotonic()
    say("loading the model for its tokenizer and unembedding")
    loaded = sources.load_model(inputs, plugins)
    timings["model_load"] = round(time.monotonic() - t0, 2)
    t0 = time.monotonic()
    decoder = sources.CachedDecoder(loaded.tokenizer)
    lens: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for i in range(0, len(chosen), LOGIT_CHUNK):
        lens.update(sources.direct_path_effects(loaded, sae, inputs, chosen[i : i + LOGIT_CHUNK], decoder))
    timings["logits"] = round(time.monotonic() - t0, 2)

    token_ids = store.token_ids

    def decode(token: int) -> str:
        return decoder.decode([token])

    def context(window: Window, value: float) -> Context:
        run = int(runs.of_row[window.row])
        return Context(
            run=run,
            example=int(example_ids[window.row]),
            start=window.lo - int(runs.starts[run]),
            focus=window.row - window.lo,
            activation=round(value, 4),
            values=[round(float(v), 4) for v in window.values],  # type: ignore[union-attr]
        )

    described = {int(f["id"]): f for f in inputs.results.get("features", [])}
    pages = []
    for f in chosen:
        ablation = None
        if f in described:
            ablation = Ablation(**{k: described[f].get(k) for k in Ablation.model_fields})
        pages.append(
            FeaturePage(
                id=f,
                n_fired=int(scan.counts[f]),
                n_tokens=scan.n_tokens,
                frequency=float(scan.counts[f] / max(scan.n_tokens, 1)),
                mean_activation=float(scan.sums[f] / max(scan.n_tokens, 1)),
                max_activation=float(scan.maxes[f]),
                histogram=histogram(scan.hist[f]),
                top=[context(by_request[(f, r)], v) for r, v in top[f]],
                quantiles=[
                    QuantileGroup(
                        quantile=n,
                        of=of,
                        bin_min=lo,
                        bin_max=hi,
                        fraction=frac,
                        contexts=[context(by_request[(f, r)], v) for r, v in picks],
                    )
                    for n, of, lo, hi, frac, picks in bands[f]
                ],
                promoted=[LogitEffect(**e) for e in lens.get(f, {}).get("promoted", [])],
                suppressed=[LogitEffect(**e) for e in lens.get(f, {}).get("suppressed", [])],
                ablation=ablation,
            )
        )
    used_runs = sorted({c.run for p in pages for c in all_contexts(p)})
    examples = {
        run: [decode(int(t)) for t in token_ids[runs.starts[run] : runs.ends[run]]] for run in used_runs
    }
    return Extracted(
        inputs=inputs,
        pages=pages,
        examples=examples,
        d_sae=d_sae,
        n_active=int((scan.counts > 0).sum()),
        n_tokens=scan.n_tokens,
        n_sequences=int(runs.starts.size),
        neuron_alignment=neuron_alignment(sae, chosen),
    )


def all_contexts(page: FeaturePage) -> list[Context]:
    return [*page.top, *(c for band in page.quantiles for c in band.contexts)]


def neuron_alignment(
    sae: Any, features: Sequence[int], n: int = 3
) -> dict[int, tuple[list[int], list[float], list[float]]]:
    """Per feature: the model dimensions its decoder direction loads on most (index, value, share of L1)."""
    w = sae.W_dec.detach().float()
    out = {}
    for f in features:
        row = w[f]
        top = row.abs().topk(min(n, row.numel()))
        l1 = float(row.abs().sum()) or 1.0
        idx = [int(i) for i in top.indices]
        out[int(f)] = (
            idx,
            [round(float(row[i]), 4) for i in idx],
            [round(abs(float(row[i])) / l1, 4) for i in idx],
        )
    return out
