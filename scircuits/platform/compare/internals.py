"""Every scircuits-internal function that ``compare`` uses, in one place, so that moving the core
(issue 9) means re-pointing only these imports. Heavy libraries are imported inside the functions."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_sae(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """(SAE module in eval mode, info) from a checkpoint folder (``platform.checkpoint.load_sae``)."""
    from scircuits.platform.train.checkpoint import load_sae as _load

    return _load(path)


def open_store(path: str | Path) -> Any:
    """A read-only ``scircuits.store.ActivationStore``."""
    from scircuits.store import ActivationStore

    return ActivationStore(path)


def load_model(model: str, model_path: str | None, device: str = "cpu") -> Any:
    """A LoadedModel as ``collect`` loads it (weights checked first), in float32."""
    from scircuits.platform.contract.hf_loading import check_weights_available
    from scircuits.platform.manager.plugin_set import get_plugins

    adapter = get_plugins().models.get(model)
    check_weights_available(adapter, model_path)
    return adapter.load(model_path=model_path, dtype="float32", device=device)


def site_tracer(loaded: Any, layer: int, site: str) -> Any:
    """``platform.tracing.SiteTracer``: ``.trace(list of id sequences)`` -> one (len, d_model) tensor each."""
    from scircuits.platform.model.tracing import SiteTracer

    return SiteTracer(loaded, layer, site)


def benchmark_examples(
    benchmark: str, split: str, limit: int | None, seed: int, options: dict[str, Any]
) -> list[Any]:
    from scircuits.platform.manager.plugin_set import get_plugins

    bench = get_plugins().benchmarks.get(benchmark)
    bench.check_split(split)
    return list(bench.examples(split, limit, seed, options))


def untrained_sae(variant: str, d_in: int, d_sae: int, hparams: dict[str, Any], seed: int) -> Any:
    """An SAE of the same variant and size with its initial (untrained) weights."""
    import torch

    from scircuits.platform.manager.plugin_set import get_plugins

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sae = get_plugins().saes.get(variant).build(d_in, d_sae, dict(hparams))
    return sae.eval()


def train_sae(train_config: dict[str, Any]) -> Path:
    """Train an SAE with the existing training entry point (``platform.training.train``)."""
    from scircuits.platform.config import TrainConfig
    from scircuits.platform.train.training import train

    return Path(train(TrainConfig(**train_config)))


def sae_complete(path: str | Path) -> bool:
    from scircuits.platform.train.checkpoint import is_complete

    return is_complete(path)


def provenance() -> dict[str, Any]:
    from scircuits.platform.common.provenance import base_provenance

    return base_provenance()


def config_error(message: str) -> Exception:
    """The one-line user error the CLI turns into exit code 2."""
    from scircuits.platform.contract.errors import ConfigError

    return ConfigError(message)
