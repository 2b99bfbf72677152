"""What compare needs from a run directory (``scircuits run`` output): its causal results, its SAE,
its store, and the model, layer, site and benchmark that produced them. A run whose causal stage
has not finished is read from its SAE's record (no causal agreement then)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scircuits.platform.compare import internals

RESULTS = Path("causal") / "results.json"


@dataclass
class Run:
    path: Path
    results: dict[str, Any]
    config: dict[str, Any]  # the ablate config recorded in results.json
    sae_path: Path | str  # a folder, or a published SAE's spec (hf:..., saelens:...)
    store_path: Path | None
    sae_meta: dict[str, Any] = field(default_factory=dict)

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
    def label(self) -> str:
        return f"{self.model} {self.site}{self.layer}"


def _config_without_results(root: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(config, results) for a run whose causal stage has not finished: model, layer, site and
    benchmark from its SAE's record of the store it trained on; no features (no causal agreement)."""
    meta_path = root / "sae" / "scircuits.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    store = meta.get("store") if isinstance(meta.get("store"), dict) else {}
    attrs = store.get("attrs") if isinstance(store.get("attrs"), dict) else {}
    if not attrs.get("model") or attrs.get("layer") is None:
        return None
    collect = attrs.get("config") if isinstance(attrs.get("config"), dict) else {}
    config = {
        "model": attrs["model"],
        "model_path": collect.get("model_path"),
        "layer": attrs["layer"],
        "site": attrs.get("site", "resid"),
        "benchmark": attrs.get("benchmark"),
        "benchmark_options": collect.get("benchmark_options") or {},
        "split": "test",
        "seed": collect.get("seed", 0),
        "sae": str(root / "sae"),
        "store": store.get("path"),
    }
    return config, {"layer": attrs["layer"], "site": attrs.get("site"), "features": [], "config": config}


def read_run(path: str | Path) -> Run:
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
        print(f"compare: {root} has no {RESULTS} yet: its causal agreement is left out", file=sys.stderr)
    else:
        try:
            results = json.loads(results_path.read_text())
        except json.JSONDecodeError as exc:
            raise internals.config_error(
                f"{results_path}, line {exc.lineno}: not valid JSON ({exc.msg})"
            ) from None
        config = results.get("config")
    if not isinstance(config, dict) or not config.get("sae") or not config.get("model"):
        raise internals.config_error(f"{results_path} records no config with the model and the SAE")
    sae_path: Path | str = Path(config["sae"])
    if not Path(sae_path).is_dir() and (root / "sae").is_dir():
        sae_path = root / "sae"  # the run folder was moved: its own sae/ folder
    elif not Path(sae_path).is_dir() and ":" in str(config["sae"]):
        sae_path = str(config["sae"])  # a published SAE the run read as it is (hf:..., saelens:...)
    elif not Path(sae_path).is_dir():
        raise internals.config_error(f"{root}: the SAE folder {config['sae']} does not exist")
    store = config.get("store")
    store_path = Path(store) if store and Path(store).is_dir() else None
    if store_path is None and (root / "activations.zarr").is_dir():
        store_path = root / "activations.zarr"
    meta_path = Path(sae_path) / "scircuits.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return Run(root, results, config, sae_path, store_path, meta)
