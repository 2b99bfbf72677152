"""What compare needs from a run directory (``scircuits run`` output): its causal results, its SAE,
its store, and the model, layer, site and benchmark that produced them. A run whose causal stage
has not finished is read from its SAE's record (no causal agreement then)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scircuits.platform.causal.results import other_sae_than_measured
from scircuits.platform.common.logs import get_logger
from scircuits.platform.compare import internals

log = get_logger(__name__)

RESULTS = Path("causal") / "results.json"


NO_FEATURES = "_no_features"  # why a run has no measured features (compare's own key, never written)


@dataclass
class Run:
    path: Path
    results: dict[str, Any]
    config: dict[str, Any]  # the ablate config recorded in results.json
    sae_path: Path | str  # a folder, or a published SAE's spec (hf:..., saelens:...)
    store_path: Path | None
    sae_meta: dict[str, Any] = field(default_factory=dict)
    tag: str | None = None  # what tells it apart from a compared run of the same model and site
    source: Any = None  # how to load its model now (internals.RunModel), once located; None: cannot

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def model(self) -> str:
        return str(self.config["model"])

    @property
    def layer(self) -> int:
        return int(self.results.get("layer", self.config.get("layer")))

    @property
    def site(self) -> str:
        return str(self.results.get("site") or self.config.get("site", "resid"))

    @property
    def features(self) -> list[dict[str, Any]]:
        return list(self.results.get("features") or [])

    @property
    def no_features(self) -> str | None:
        """Why the run has no measured features to compare (None: it has them, or measured none)."""
        why = self.results.get(NO_FEATURES)
        return f"{self.path}: {why}" if why else None

    @property
    def label(self) -> str:
        base = f"{self.model} {self.site}{self.layer}"
        return base if self.tag is None else f"{base} ({self.tag})"

    @property
    def sae_seed(self) -> int | None:
        seeds = self.sae_meta.get("seeds")
        seed = seeds.get("seed") if isinstance(seeds, dict) else None
        return seed if isinstance(seed, int) else None


def tag_alike(runs: list[Run]) -> None:
    """Runs of the same model and site (one label) are told apart: by their SAEs' seeds where those
    differ, else by their folders (``name``, ``parent/name``, ...)."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    for group in (g for g in groups.values() if len(g) > 1):
        for tags in _candidate_tags(group):
            if None not in tags and len(set(tags)) == len(tags):
                for run, tag in zip(group, tags, strict=True):
                    run.tag = tag
                break


def _candidate_tags(group: list[Run]) -> Iterator[list[str | None]]:
    yield [None if r.sae_seed is None else f"seed {r.sae_seed}" for r in group]
    parts = [r.path.absolute().parts for r in group]
    for depth in range(1, max(len(p) for p in parts) + 1):
        yield ["/".join(p[-depth:]) for p in parts]
    yield [f"run {i + 1}" for i in range(len(group))]


def _config_without_results(root: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(config, results) for a run whose causal stage has not finished: model, layer, site and
    benchmark from its SAE's record of the store it trained on; no features (no causal agreement)."""
    meta_path = root / "sae" / "scircuits.json"
    if not meta_path.is_file():
        return None
    meta = _read_json(meta_path)
    store = meta.get("store") if isinstance(meta.get("store"), dict) else {}
    attrs = store.get("attrs") if isinstance(store.get("attrs"), dict) else {}
    if not attrs.get("model") or attrs.get("layer") is None:
        return None
    collect = attrs.get("config") if isinstance(attrs.get("config"), dict) else {}
    config = {
        "model": attrs["model"],
        # the store's config records the weights' fingerprint, not the folder: the folder is model_id
        "model_path": attrs.get("model_id") if collect.get("model_path") else None,
        "layer": attrs["layer"],
        "site": attrs.get("site", "resid"),
        "benchmark": attrs.get("benchmark"),
        "benchmark_options": collect.get("benchmark_options") or {},
        "split": "test",
        "seed": collect.get("seed", 0),
        "sae": str(root / "sae"),
        "store": store.get("path"),
    }
    results = {"layer": attrs["layer"], "site": attrs.get("site"), "features": [], "config": config}
    return config, {**results, NO_FEATURES: "its causal stage has not finished (no causal/results.json)"}


def _read_json(path: Path) -> dict[str, Any]:
    data = internals.read_json_file(path)
    if not isinstance(data, dict):
        raise internals.config_error(f"{path} holds a {type(data).__name__}, not a JSON object")
    return data


def read_run(path: str | Path, plugins: Any = None) -> Run:
    """The run folder ``path`` as given: its own sae/ and activations.zarr, never the absolute paths
    results.json recorded (they may name another, later run). The recorded store is used only when
    the folder has none, and only when its identity is the one the SAE was trained on."""
    root = Path(path)
    results_path = root / RESULTS
    if not root.is_dir():
        raise internals.config_error(f"run directory {root} does not exist")
    if not results_path.is_file():
        fallback = _config_without_results(root)
        if fallback is None:
            raise internals.config_error(
                f"{root} has no {RESULTS} and no sae/scircuits.json: give a folder written by `scircuits run`"
            )
        config, results = fallback
        log.info(f"compare: {root} has no {RESULTS} yet: its causal agreement is left out")
    else:
        results = internals.read_causal_results(results_path, plugins)
        config = results.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), str):
        raise internals.config_error(f"{results_path} records no config with the model and the SAE")
    sae_path = root / "sae"
    spec = str(config.get("sae") or "")
    if not sae_path.exists() and ":" in spec and not Path(spec).exists():
        # a published SAE the run read as it is (hf:..., saelens:...): no sae/ folder of its own
        return Run(root, results, config, spec, run_store(root, config, {}), {})
    if not internals.sae_complete(sae_path):
        what = "is not a complete SAE checkpoint" if sae_path.is_dir() else "does not exist"
        damage = internals.sae_damage(sae_path) if sae_path.is_dir() else None
        if damage is not None:
            what = f"holds a damaged sae_weights.safetensors ({damage})"
        raise internals.config_error(
            f"{sae_path} {what}: compare reads the SAE of the run folder it is given; restore it, or rerun "
            f"`scircuits run` for {root}"
        )
    meta = _read_json(sae_path / "scircuits.json") if (sae_path / "scircuits.json").is_file() else {}
    results = _same_sae_or_no_features(root, sae_path, results)
    return Run(root, results, config, sae_path, run_store(root, config, meta), meta)


def _same_sae_or_no_features(root: Path, sae_path: Path, results: dict[str, Any]) -> dict[str, Any]:
    """``results``, without its features when they were measured with another SAE than sae/ holds
    (results.json records the weights' sha256): their ids would name other latents."""
    other = other_sae_than_measured(results, sae_path) if results.get("features") else None
    if other is None:
        return results
    log.info(f"compare: {other}; its causal agreement is left out")
    return {**results, "features": [], NO_FEATURES: "its SAE is not the one its study measured"}


def run_store(root: Path, config: dict[str, Any], meta: dict[str, Any]) -> Path | None:
    """The run folder's activations.zarr; when it has none, the store recorded in results.json or the
    SAE's record, if its identity is the one the SAE was trained on; else None (no store)."""
    trained_on = meta.get("store") if isinstance(meta.get("store"), dict) else {}
    attrs = trained_on.get("attrs") if isinstance(trained_on.get("attrs"), dict) else None
    own = root / "activations.zarr"
    if own.is_dir():
        if attrs is not None and not internals.same_store(own, attrs):
            raise internals.config_error(
                f"{own} is not the store {root / 'sae'} was trained on (their identities differ): restore "
                "the run's own store, or rerun `scircuits run`"
            )
        return own
    for recorded in (config.get("store"), trained_on.get("path")):
        if not isinstance(recorded, str) or not recorded or not Path(recorded).is_dir():
            continue
        if attrs is not None and internals.same_store(Path(recorded), attrs):
            log.info(f"note: {root} has no activations.zarr; using {recorded} (same store identity)")
            return Path(recorded)
        log.info(
            f"note: {root} has no activations.zarr, and {recorded} is not the store its SAE was trained "
            "on: no store for this run"
        )
    return None
