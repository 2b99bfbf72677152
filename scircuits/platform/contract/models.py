"""Model adapters: where a model's weights come from and where its decoder blocks and sites are.

Nothing here imports torch or transformers at module import time; ``load`` does.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class Site(str, enum.Enum):
    """Where in a decoder block activations are read (and SAEs are spliced)."""

    RESID = "resid"  # the block's output (residual stream after the block)
    MLP = "mlp"  # the MLP sub-module's output
    ATTN = "attn"  # the attention sub-module's output


DEFAULT_SITE_PATHS: Mapping[str, str] = {"resid": "", "mlp": "mlp", "attn": "self_attn"}


@dataclass
class LoadedModel:
    """A model ready to trace: the torch module, its tokenizer, and where it came from."""

    adapter: ModelAdapter
    model: Any  # a transformers PreTrainedModel (causal LM)
    tokenizer: Any
    model_id: str  # hub id, local path or packaged file it was loaded from
    revision: str  # commit id or hash of the weights file
    dtype: str
    device: str
    n_layers: int
    d_model: int

    def module(self, path: str) -> torch.nn.Module:
        obj: Any = self.model
        for part in path.split("."):
            obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
        return obj

    def site_path(self, layer: int, site: str | Site) -> str:
        return self.adapter.site_path(layer, site, n_layers=self.n_layers)

    def site_module(self, layer: int, site: str | Site) -> torch.nn.Module:
        return self.module(self.site_path(layer, site))


class ModelAdapter:
    """Base of every model adapter. Subclass it, or declare an :class:`HFModelAdapter`."""

    name: str = ""
    hf_id: str = ""
    description: str = ""
    n_layers: int = 0
    d_model: int = 0
    default_layer: int | None = None  # None: the middle block
    blocks_path: str = "model.layers"
    site_paths: Mapping[str, str] = DEFAULT_SITE_PATHS
    remote: bool = False  # offered on NDIF

    def layer_or_default(self, layer: int | None, n_layers: int | None = None) -> int:
        n = n_layers or self.n_layers
        if layer is None:
            return self.default_layer if self.default_layer is not None else n // 2
        if not 0 <= layer < n:
            raise ValueError(f"layer {layer} is out of range for {self.name}: it has layers 0..{n - 1}")
        return layer

    def site_path(self, layer: int, site: str | Site, n_layers: int | None = None) -> str:
        site = Site(site).value
        if site not in self.site_paths:
            raise ValueError(f"{self.name} has no site {site!r}; its sites: {', '.join(self.site_paths)}")
        layer = self.layer_or_default(layer, n_layers)
        sub = self.site_paths[site]
        return f"{self.blocks_path}.{layer}" + (f".{sub}" if sub else "")

    def resolve_site(self, layer: int | None, site: str | Site, n_layers: int | None = None) -> int:
        """The layer (default: the adapter's) after checking that it and the site exist; ConfigError if not."""
        from scircuits.platform.contract.errors import ConfigError

        try:
            resolved = self.layer_or_default(layer, n_layers)
            self.site_path(resolved, site, n_layers=n_layers)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return resolved

    def load(
        self, *, model_path: str | None = None, dtype: str = "float32", device: str = "cpu"
    ) -> LoadedModel:
        raise NotImplementedError

    def facts(self) -> dict[str, Any]:
        return {
            "hf_id": self.hf_id,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "default_layer": self.layer_or_default(None) if self.n_layers else None,
            "sites": list(self.site_paths),
            "remote": self.remote,
        }


@dataclass(eq=False)
class HFModelAdapter(ModelAdapter):
    """One declaration over the shared Hugging Face loader (AutoModelForCausalLM).

    ``model_type`` names the transformers architecture (``config.model_type``); tests build a tiny
    randomly initialised model from it with ``tiny_config()``.
    """

    name: str = ""
    hf_id: str = ""
    description: str = ""
    n_layers: int = 0
    d_model: int = 0
    blocks_path: str = "model.layers"
    site_paths: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_SITE_PATHS))
    default_layer: int | None = None
    remote: bool = False
    model_type: str = ""
    tiny_overrides: Mapping[str, Any] = field(default_factory=dict)

    def load(
        self, *, model_path: str | None = None, dtype: str = "float32", device: str = "cpu"
    ) -> LoadedModel:
        from scircuits.platform.contract.hf_loading import load_hf_model

        return load_hf_model(self, model_path=model_path, dtype=dtype, device=device)

    def tiny_config(self) -> Any:
        """A small transformers config of this architecture, for tests on random weights."""
        from scircuits.platform.contract.hf_loading import tiny_config

        return tiny_config(self)

    def facts(self) -> dict[str, Any]:
        return {**super().facts(), "model_type": self.model_type}
