"""Every scircuits-internal function that ``compare`` uses, in one place. The ones that need plugin
objects are methods of :class:`Core`, made from the plugin set the caller passes. Heavy libraries
(torch) are imported inside the functions."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from scircuits.platform.causal.registry import analyses_of
from scircuits.platform.causal.results import read_checked_results
from scircuits.platform.common.provenance import base_provenance
from scircuits.platform.config import TrainConfig
from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.contract.hf_loading import check_weights_available
from scircuits.platform.contract.jsonvalues import load_file
from scircuits.platform.manager.plugin_set import PluginSet
from scircuits.platform.model.recorded import RunModel, check_loaded, recorded_revision, run_model
from scircuits.platform.model.tracing import SiteTracer
from scircuits.platform.train.checkpoint import WEIGHTS_FILE, is_complete, weights_damage
from scircuits.platform.train.checkpoint import load_sae as load_checkpoint
from scircuits.platform.train.training import train
from scircuits.store import ActivationStore
from scircuits.store.format import identity_of

SAE_WEIGHTS = WEIGHTS_FILE


class Core:
    """The core's functions that take the plugin set, bound to one."""

    def __init__(self, plugins: PluginSet) -> None:
        self.plugins = plugins

    def load_sae(self, path: str | Path) -> tuple[Any, dict[str, Any]]:
        """(SAE module in eval mode, info) from a checkpoint folder."""
        return load_checkpoint(path, self.plugins)

    def load_model(self, model: str, model_path: str | None, device: str = "cpu") -> Any:
        """A LoadedModel as ``collect`` loads it (weights checked first), in float32."""
        adapter = self.plugins.models.get(model)
        check_weights_available(adapter, model_path)
        return adapter.load(model_path=model_path, dtype="float32", device=device)

    def locate_model(self, run: Any, given: list[str]) -> RunModel:
        """How to load ``run``'s model: where it recorded it, or the ``--model-path`` folder of ``given``
        that holds the recorded weights (``platform.model.recorded.run_model``); ConfigError in one line."""
        return run_model(
            self.plugins,
            run.path,
            run.model,
            run.config.get("model_path"),
            recorded_revision(run.results),
            given,
            strict=False,
        )

    def load_run_model(self, source: RunModel, run_dir: Any) -> Any:
        """The model of a run from where :meth:`locate_model` found it, its weights checked against
        the run's record once loaded."""
        loaded = self.load_model(source.model, source.model_path)
        check_loaded(source, getattr(loaded, "revision", None), run_dir)
        return loaded

    def benchmark_examples(
        self, benchmark: str, split: str, limit: int | None, seed: int, options: dict[str, Any]
    ) -> list[Any]:
        bench = self.plugins.benchmarks.get(benchmark)
        bench.check_split(split)
        return list(bench.read_examples(split, limit, seed, options))

    def untrained_sae(self, variant: str, d_in: int, d_sae: int, hparams: dict[str, Any], seed: int) -> Any:
        """An SAE of the same variant and size with its initial (untrained) weights."""
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            sae = self.plugins.saes.get(variant).make(d_in, d_sae, dict(hparams))
        return sae.eval()

    def train_sae(self, train_config: dict[str, Any]) -> Path:
        """Train an SAE with the training entry point (``platform.train.training.train``)."""
        return Path(train(TrainConfig(**train_config), self.plugins))


def open_store(path: str | Path) -> ActivationStore:
    """A read-only activation store."""
    return ActivationStore(path)


def site_tracer(loaded: Any, layer: int, site: str) -> SiteTracer:
    """``.trace(list of id sequences)`` -> one (len, d_model) tensor each."""
    return SiteTracer(loaded, layer, site)


def sae_complete(path: str | Path) -> bool:
    return is_complete(path)


def sae_damage(path: str | Path) -> str | None:
    """Why a checkpoint's weights file is not whole (truncated, overwritten), or None."""
    weights = Path(path) / WEIGHTS_FILE
    return weights_damage(weights) if weights.is_file() else None


def provenance() -> dict[str, Any]:
    return base_provenance()


def config_error(message: str) -> Exception:
    """The one-line user error the CLI turns into exit code 2."""
    return ConfigError(message)


def read_causal_results(path: str | Path, plugins: PluginSet | None = None) -> dict[str, Any]:
    """causal/results.json as a dict, its study fields (and, given ``plugins``, every analysis's
    fields) type-checked; ConfigError in one line otherwise."""
    analyses = list(analyses_of(plugins)) if plugins is not None else []
    return read_checked_results(path, analyses)


def read_json_file(path: str | Path) -> Any:
    """A JSON file's value; ConfigError in one line when it is not readable JSON."""
    return load_file(path)


def store_identity(path: str | Path) -> dict[str, Any]:
    """What a store holds (format.identity_of its attributes), with its row count."""
    store = ActivationStore(path)
    return {**identity_of(dict(store.attrs)), "n_tokens": store.n_tokens}


def same_store(path: str | Path, trained_on_attrs: dict[str, Any]) -> bool:
    """Whether the store at ``path`` holds what a checkpoint recorded it trained on (identity and rows)."""
    try:
        found = store_identity(path)
    except ConfigError:
        return False
    recorded = {**identity_of(trained_on_attrs), "n_tokens": trained_on_attrs.get("n_tokens")}
    return found == recorded


def store_key(path: str | Path) -> str:
    """A short hash of a store's identity: two stores with the same key hold the same rows."""
    blob = json.dumps(store_identity(path), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]
