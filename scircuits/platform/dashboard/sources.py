"""Everything the dashboard reads from a finished run directory, through as few internals as possible.

This is the only dashboard module that knows the run directory's layout or imports scircuits'
internals; re-point these functions when the core moves:

- ``causal/results.json`` (keys as written by ``scircuits.platform.causal`` analyses``);
- the activation store (``scircuits.store.ActivationStore``); for a run of a given SAE, which
  collected none, the run's evaluation examples traced at its site (``scircuits.platform.collect``);
- the SAE checkpoint (``scircuits.platform.checkpoint.load_sae``);
- the model, for its tokenizer and unembedding (``get_plugins().models.get(name).load``);
- the direct-path logit effects (``scircuits.platform.causal.study.unembedding_effects`` over a
  ``scircuits.platform.splice.SplitModel``);
- a ``scircuits compare`` folder: its ``results.json`` (``scircuits.platform.compare.schema``) and the
  per-pair matches files beside it;
- a ``scircuits circuit`` folder (RUN/circuit, or ``--circuit``): its ``results.json``
  (``scircuits.platform.circuit.results``), and which of its sites has the run's SAE.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from scircuits.platform.causal.registry import analyses_of
from scircuits.platform.causal.results import other_sae_than_measured, read_checked_results
from scircuits.platform.causal.study import unembedding_effects
from scircuits.platform.circuit.results import RESULTS_FILE as CIRCUIT_RESULTS
from scircuits.platform.circuit.results import CircuitResults, read_circuit
from scircuits.platform.collect.collection import run_collect
from scircuits.platform.common.artifacts import read_lock, read_marker
from scircuits.platform.common.logs import get_logger
from scircuits.platform.common.provenance import file_sha256
from scircuits.platform.compare.runs import run_store
from scircuits.platform.compare.schema import FORMAT as COMPARE_FORMAT
from scircuits.platform.compare.schema import CompareResults
from scircuits.platform.config import CollectConfig
from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.contract.hf_loading import check_weights_available
from scircuits.platform.contract.jsonvalues import load_file, parse_text
from scircuits.platform.model.recorded import RunModel, check_loaded, recorded_revision, run_model
from scircuits.platform.model.splice import SplitModel
from scircuits.platform.train.checkpoint import WEIGHTS_FILE
from scircuits.platform.train.checkpoint import load_sae as load
from scircuits.store import ActivationStore

if TYPE_CHECKING:
    import torch

RESULTS = Path("causal") / "results.json"
STORE = "activations.zarr"
# a run of a given SAE collects no store: the dashboard traces the run's evaluation examples here
EVALUATION_STORE = "evaluation.zarr"
SAE = "sae"
REPORT_FILES = ("report.html", "report.md")
CIRCUIT = "circuit"  # where `scircuits run --circuit-layers` (or `circuit --out RUN/circuit`) writes


log = get_logger(__name__)


@dataclass
class RunInputs:
    """The artifacts of one finished run that the dashboard reads."""

    run_dir: Path
    results: dict[str, Any]
    store_path: Path
    sae_path: Path | str  # a folder, or the spec of a published SAE the run read as it is
    collect: CollectConfig | None = None  # how to trace ``store_path`` first (a run without a store)
    model: RunModel | None = None  # how to load the run's model (:func:`locate_model`)

    @property
    def config(self) -> dict[str, Any]:
        return self.results.get("config") or {}

    @property
    def layer(self) -> int:
        return int(self.results["layer"])

    @property
    def site(self) -> str:
        return str(self.results["site"])

    @property
    def first_position(self) -> int:
        return int(self.config.get("edit_from_position") or 0)


def _existing(candidates: Sequence[Path | None], what: str, run_dir: Path) -> Path:
    for path in candidates:
        if path is not None and path.exists():
            return path
    raise ConfigError(
        f"{run_dir}: no {what} found (looked in {', '.join(str(p) for p in candidates if p)}); "
        "give the directory that `scircuits run` wrote"
    )


def read_run(run_dir: str | Path, plugins: Any = None, store: str | Path | None = None) -> RunInputs:
    """The results, store and SAE of a run directory; ConfigError naming what is missing or of the
    wrong type (the study's fields, and every analysis of ``plugins``). ``store``: an activation store
    of the run's model, layer and site to scan instead of the run's own (a run of a given SAE collects
    none)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ConfigError(f"{run} is not a directory; give a run directory written by `scircuits run`")
    results_path = run / RESULTS
    if not results_path.is_file():
        raise ConfigError(f"{results_path} is missing: run the ablation stage first (`scircuits run`)")
    analyses = list(analyses_of(plugins)) if plugins is not None else []
    results = read_checked_results(results_path, analyses)
    if "features" not in results:
        raise ConfigError(f"{results_path} has no 'features': it was not written by `scircuits ablate`")
    config = results["config"]
    sae_ref = str(config.get("sae") or "")
    if not (run / SAE).exists() and ":" in sae_ref and not Path(sae_ref).exists():
        sae: Path | str = sae_ref  # a published SAE (hf:..., saelens:...), read as the run read it
        meta: Any = {}
    else:
        # the folder's own SAE, never the path results.json recorded (it may name another, later run)
        sae = _existing([run / SAE], "SAE checkpoint", run)
        other = other_sae_than_measured(results, sae)
        if other is not None:
            log.warning(f"warning: {other}")
        meta_path = sae / "scircuits.json"
        meta = load_file(meta_path) if meta_path.is_file() else {}
    if store is not None:
        return RunInputs(run, results, given_store(Path(store), results), sae)
    # its own store; the recorded one only when absent here and of the identity the SAE trained on
    store_path = run_store(run, config, meta if isinstance(meta, dict) else {})
    if store_path is None and isinstance(sae, str):
        own = run / EVALUATION_STORE
        return RunInputs(run, results, own, sae, collect=evaluation_collection(results, own))
    if store_path is None:
        raise ConfigError(
            f"{run}: no activation store found (no {STORE} there, and the store its results record is "
            "missing or not the one its SAE was trained on); give the directory that `scircuits run` wrote"
        )
    return RunInputs(run, results, store_path, sae)


def evaluation_collection(results: dict[str, Any], out: Path) -> CollectConfig:
    """The collection of the study's own examples (benchmark, split, limit, seed) at its site."""
    config = results["config"]
    return CollectConfig(
        model=config.get("model"),
        benchmark=config.get("benchmark"),
        benchmark_options=config.get("benchmark_options") or {},
        layer=int(results["layer"]),
        site=results["site"],
        split=config.get("split") or "test",
        limit=config.get("limit"),
        seed=int(config.get("seed") or 0),
        max_length=config.get("max_length"),
        model_path=config.get("model_path"),
        remote=bool(config.get("remote")),
        out=str(out),
        progress=False,
    )


def collect_store(inputs: RunInputs, plugins: Any, say: Any) -> None:
    """Trace the run's evaluation examples into ``inputs.store_path`` when the run has no store
    (a complete store of the same collection is kept as it is)."""
    if inputs.collect is None:
        return
    summary = run_collect(inputs.collect, plugins)
    if not summary.already_complete:
        say(
            f"dashboard: the run studied a given SAE and collected no store; traced its {summary.n_examples} "
            f"evaluation examples ({summary.n_tokens} tokens) into {inputs.store_path}"
        )


def given_store(path: Path, results: dict[str, Any]) -> Path:
    """``--store``: a store of the run's model, layer and site, else ConfigError naming the difference."""
    try:
        attrs = ActivationStore(path).attrs
    except Exception as exc:
        raise ConfigError(f"--store {path}: not a readable activation store ({exc})") from None
    expected = {"model": results["config"].get("model"), "layer": results["layer"], "site": results["site"]}
    differences = [f"{k} {attrs.get(k)!r}, run {v!r}" for k, v in expected.items() if attrs.get(k) != v]
    if differences:
        raise ConfigError(
            f"--store {path} is not from the run's site ({'; '.join(differences)}); give a store of "
            f"{expected['model']} layer {expected['layer']} {expected['site']}"
        )
    return path


def open_store(inputs: RunInputs) -> ActivationStore:
    return ActivationStore(inputs.store_path)


def load_sae(inputs: RunInputs, plugins: Any) -> torch.nn.Module:
    sae, _ = load(inputs.sae_path, plugins)
    return sae.eval()


def locate_model(inputs: RunInputs, plugins: Any, model_path: str | Path | None = None) -> RunModel:
    """Where the run's model loads from, checked before any work: where the run recorded it, or
    ``model_path`` (``--model-path``: its weights must be those the run recorded); ConfigError in one
    line when the recorded folder is gone (naming ``--model-path``) or the weights cannot be had."""
    config = inputs.config
    source = run_model(
        plugins,
        inputs.run_dir,
        str(config["model"]),
        config.get("model_path"),
        recorded_revision(inputs.results),
        [model_path] if model_path is not None else (),
    )
    check_weights_available(plugins.models.get(source.model), source.model_path)
    inputs.model = source
    if inputs.collect is not None and source.given:  # the evaluation examples traced from there too
        inputs.collect = inputs.collect.model_copy(
            update={"model": source.model, "model_path": source.model_path}
        )
    return source


def load_model(inputs: RunInputs, plugins: Any) -> Any:
    """The run's model (LoadedModel: tokenizer, weights) on the CPU in float32, from where
    :func:`locate_model` found it (its weights checked against the run's record once loaded)."""
    config = inputs.config
    source = inputs.model or RunModel(str(config["model"]), config.get("model_path"), None)
    adapter = plugins.models.get(source.model)
    loaded = adapter.load(model_path=source.model_path, dtype="float32", device="cpu")
    check_loaded(source, getattr(loaded, "revision", None), inputs.run_dir)
    return loaded


class CachedDecoder:
    """``decode([id])`` of a tokenizer, remembered per token (the dashboard decodes the same ids often)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._seen: dict[tuple[int, ...], str] = {}

    def decode(self, ids: Sequence[int]) -> str:
        key = tuple(int(i) for i in ids)
        if key not in self._seen:
            self._seen[key] = self.tokenizer.decode(list(key))
        return self._seen[key]


def direct_path_effects(
    loaded: Any,
    sae: torch.nn.Module,
    inputs: RunInputs,
    features: Sequence[int],
    decoder: CachedDecoder,
    n: int = 10,
) -> dict[int, dict[str, list[dict[str, Any]]]]:
    """{feature: {"promoted": [{token, logit}], "suppressed": [...]}} through the unembedding only."""
    split = SplitModel(loaded, inputs.layer, inputs.site)
    return unembedding_effects(split, sae, list(features), decoder, n=n)


COMPARE_RESULTS = "results.json"


def not_of_kind(folder: Path, kind: str, option: str, writer: str) -> None:
    """ConfigError when ``folder``'s marker names another kind of artifact than ``kind``."""
    marker = read_marker(folder)
    if marker is not None and marker.kind != kind:
        raise ConfigError(
            f"{option} {folder} holds a {marker.kind} artifact, not a {kind}: give the --out folder "
            f"of {writer}"
        )


def read_comparison(compare_dir: str | Path) -> CompareResults:
    """The results of a ``scircuits compare --out DIR`` folder; ConfigError naming what is wrong."""
    path = Path(compare_dir) / COMPARE_RESULTS
    not_of_kind(Path(compare_dir), "compare", "--compare", "`scircuits compare`")
    if not path.is_file():
        raise ConfigError(f"{path} is missing: give the --out folder of `scircuits compare`")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(f"{path} cannot be read ({why}); rerun `scircuits compare`") from None
    parse_text(text, str(path), "rerun `scircuits compare`")
    try:
        results = CompareResults.model_validate_json(text)
    except (ValidationError, ValueError) as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(
            f"{path} is not a `scircuits compare` results file ({first}); rerun compare"
        ) from None
    if results.format != COMPARE_FORMAT:
        raise ConfigError(f"{path} has format {results.format!r}, not {COMPARE_FORMAT!r}")
    return results


def read_match_arrays(compare_dir: str | Path, relative: str) -> dict[str, np.ndarray]:
    """The arrays of one pair's matches file (keys in docs/formats.md)."""
    path = Path(compare_dir) / relative
    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"{path} could not be read ({exc}); rerun `scircuits compare`") from None


def circuit_dir(run_dir: Path, given: str | Path | None) -> Path | None:
    """The circuit folder the dashboard draws: ``given`` (ConfigError when it holds no circuit), else
    RUN/circuit when it holds one, else None."""
    if given is not None:
        folder = Path(given)
        not_of_kind(folder, "circuit", "--circuit", "`scircuits circuit`")
        if not (folder / CIRCUIT_RESULTS).is_file():
            raise ConfigError(
                f"--circuit {folder}: no {CIRCUIT_RESULTS} there; give the --out folder of "
                "`scircuits circuit`"
            )
        return folder
    folder = run_dir / CIRCUIT
    return folder if (folder / CIRCUIT_RESULTS).is_file() else None


def read_circuit_for(folder: Path, inputs: RunInputs) -> CircuitResults:
    """A circuit's typed results, read under the folder's lock (refused while `scircuits circuit`
    writes it); ConfigError when it is not a circuit's or not of the run's model."""
    lock = read_lock(folder, "circuit results")
    try:
        parse_text(
            (folder / CIRCUIT_RESULTS).read_text(), str(folder / CIRCUIT_RESULTS), "rerun `scircuits circuit`"
        )
        results = read_circuit(folder)
    except (ValidationError, ValueError) as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(
            f"{folder / CIRCUIT_RESULTS} is not a `scircuits circuit` results file ({first}); rerun circuit"
        ) from None
    finally:
        if lock is not None:
            lock.release()
    if results.model != inputs.config.get("model"):
        raise ConfigError(
            f"the circuit in {folder} is of model {results.model!r}, the run {inputs.run_dir} of "
            f"{inputs.config.get('model')!r}: give a circuit of the run's model"
        )
    return results


def _weights_sha(spec: str | Path) -> str | None:
    weights = Path(spec) / WEIGHTS_FILE
    return file_sha256(weights) if weights.is_file() else None


def site_of_run_sae(results: CircuitResults, inputs: RunInputs) -> str | None:
    """The name of the circuit's site that uses the run's own SAE (same layer, site and weights, or
    the same published SAE), whose features therefore have this dashboard's pages; else None."""
    ours = _weights_sha(inputs.sae_path) if isinstance(inputs.sae_path, Path) else None
    for site in results.sites:
        if site.layer != inputs.layer or site.site != inputs.site:
            continue
        if isinstance(inputs.sae_path, str):
            same = site.sae == inputs.sae_path
        else:  # the weights the circuit used (recorded), else those at its path now (older results)
            used = site.sae_sha256 if site.sae_sha256 is not None else _weights_sha(site.sae)
            same = ours is not None and used == ours
        if same:
            return site.name
    return None
