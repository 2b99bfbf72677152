"""Model adapters: where a model's weights come from, where its decoder blocks and sites are, and
what the core asks of a loaded model (its final norm, logit softcap, the attributes a stand-in block
must carry). Every such question is a method here with the Hugging Face answer as its default, so a
new architecture overrides a method instead of editing the core.

Nothing here imports torch or transformers at module import time; ``load`` does.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from scircuits.platform.contract import hf_loading
from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.contract.hf_loading import WeightsSource

if TYPE_CHECKING:
    import torch


class Site(str, enum.Enum):
    """Where in a decoder block activations are read (and SAEs are spliced)."""

    RESID = "resid"  # the block's output (residual stream after the block)
    MLP = "mlp"  # the MLP sub-module's output
    ATTN = "attn"  # the attention sub-module's output


DEFAULT_SITE_PATHS: Mapping[str, str] = {"resid": "", "mlp": "mlp", "attn": "self_attn"}
# TransformerLens' hook of each site in block N (``blocks.N.<hook>``); ``hook_resid_pre`` of block N
# is the residual stream entering it, our ``resid`` site of block N - 1.
TL_SITE_HOOKS: Mapping[str, str] = {
    "resid": "hook_resid_post",
    "mlp": "hook_mlp_out",
    "attn": "hook_attn_out",
}
TL_RESID_PRE = "hook_resid_pre"


def tl_hook_name(layer: int, site: str | Site) -> str:
    """TransformerLens' name of a site (``blocks.15.hook_resid_post``): the same for every model."""
    return f"blocks.{layer}.{TL_SITE_HOOKS[Site(site).value]}"


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

    # True on the one object used when the config names none (docs/plugins.md, "Defaults").
    default: ClassVar[bool] = False
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

    def hook_name(self, layer: int, site: str | Site) -> str:
        """TransformerLens' name of the site (``blocks.15.hook_resid_post``)."""
        return tl_hook_name(layer, site)

    def site_of_hook(self, name: str, n_layers: int | None = None) -> tuple[int, str]:
        """(layer, site) of a hook name as other tools write it: TransformerLens (``blocks.N.hook_
        resid_post``, ``hook_resid_pre``, ``hook_mlp_out``, ``hook_attn_out``), this adapter's HF module
        path (``model.layers.N``, ``model.layers.N.mlp``), a path under the base model as sparsify
        writes it (``layers.N``), or ``layers.N.<site>`` (scircuits before TransformerLens names).
        ConfigError for a name that is none of these or a site this adapter lacks."""
        n = n_layers or self.n_layers
        parts = name.split(".")
        found: tuple[int, str] | None = None
        if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit():
            layer, hook = int(parts[1]), parts[2]
            by_hook = {v: k for k, v in TL_SITE_HOOKS.items()}
            if hook in by_hook:
                found = (layer, by_hook[hook])
            elif hook == TL_RESID_PRE and layer > 0:
                found = (layer - 1, "resid")
            elif hook == TL_RESID_PRE:
                raise ConfigError(
                    f"hook {name!r} is the embeddings' output, not a site of a block; scircuits reads "
                    "block outputs (blocks.N.hook_resid_post)"
                )
        else:
            found = self._site_of_module_path(name)
        if found is None:
            known = ", ".join(f"blocks.N.{h}" for h in (*TL_SITE_HOOKS.values(), TL_RESID_PRE))
            example = self.site_path(0, "resid", n_layers=max(n, 1)) if self.blocks_path else "model.layers.0"
            raise ConfigError(
                f"hook {name!r} names no site of {self.name} (known: {known}, or module paths like {example})"
            )
        layer, site = found
        if site not in self.site_paths:
            raise ConfigError(f"hook {name!r} is the {site!r} site, which {self.name} does not have")
        if n and not 0 <= layer < n:
            raise ConfigError(f"hook {name!r} names layer {layer}, but {self.name} has layers 0..{n - 1}")
        return found

    def _site_of_module_path(self, name: str) -> tuple[int, str] | None:
        base_paths = {self.blocks_path, self.blocks_path.split(".", 1)[-1], "layers"}
        for blocks in sorted(base_paths, key=len, reverse=True):
            if not blocks or not name.startswith(blocks + "."):
                continue
            head, _, rest = name[len(blocks) + 1 :].partition(".")
            if not head.isdigit():
                continue
            by_path = {v: k for k, v in self.site_paths.items()}
            if rest in by_path:
                return int(head), by_path[rest]
            if rest in TL_SITE_HOOKS:  # layers.N.resid: scircuits' own name before this mapping
                return int(head), rest
        return None

    def resolve_site(self, layer: int | None, site: str | Site, n_layers: int | None = None) -> int:
        """The layer (default: the adapter's), checked with the site; ConfigError if either is absent."""
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

    # -- what the core asks of an adapter (Hugging Face defaults) ------------------------------

    # Attributes of a decoder block that the model's forward reads from each block (transformers
    # masks per attention type); a stand-in for a block below the splice site carries them too.
    block_attributes: tuple[str, ...] = ("attention_type", "layer_idx", "is_sliding")
    final_norm_names: tuple[str, ...] = ("ln_f", "norm", "final_layernorm", "final_layer_norm")

    def specialize(self, suffix: str) -> ModelAdapter:
        """The adapter for ``NAME:suffix`` when this adapter is registered as the prefix ``NAME:``."""
        raise ConfigError(f"model {self.name!r} takes no ':' suffix (got {suffix!r})")

    def resolved_for(self, model: Any) -> ModelAdapter:
        """This adapter completed from the loaded ``model`` (blocks, sites, sizes); itself by default."""
        return self

    def check_weights(self, model_path: str | Path | None = None) -> WeightsSource:
        """Where the weights would load from, or WeightsUnavailableError naming the ways to supply
        them; cheap (no weights are read), so a pipeline can fail before any heavy work. Default: the
        ``model_path`` folder, a folder named by ``hf_id``, or the hub repository ``hf_id`` (cache
        first)."""
        return hf_loading.default_weights_check(self, model_path)

    def wrap(
        self, model: Any, tokenizer: Any, *, model_id: str, revision: str, dtype: str, device: str
    ) -> LoadedModel:
        """A LoadedModel over a loaded transformers causal LM: eval mode, sizes read from its config."""
        model.eval()
        n_layers, d_model = self.config_sizes(model.config)
        return LoadedModel(
            adapter=self,
            model=model,
            tokenizer=tokenizer,
            model_id=model_id,
            revision=revision,
            dtype=dtype,
            device=device,
            n_layers=n_layers,
            d_model=d_model,
        )

    @staticmethod
    def config_sizes(config: Any) -> tuple[int, int]:
        """(n_layers, d_model) from a transformers config (the text config of multimodal ones)."""
        return hf_loading.config_sizes(config)

    def max_positions(self, model: Any) -> int | None:
        """The longest sequence the model takes (its position table), if it declares one."""
        config = model.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        value = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
        return int(value) if value else None

    def base_model(self, model: Any) -> Any:
        """The module that maps input ids to the last hidden state (no unembedding)."""
        return model.base_model

    def unembedding(self, model: Any) -> Any:
        """The output embedding (hidden state -> logits), a module with a ``weight`` (vocab, d)."""
        return model.get_output_embeddings()

    def logit_softcap(self, model: Any) -> float | None:
        """c in ``logits = c * tanh(logits / c)`` after the unembedding (Gemma 2), or None."""
        return getattr(model.config, "final_logit_softcapping", None)

    def final_norm(self, model: Any) -> Any:
        """The norm applied before the unembedding: the last norm module directly under the base model."""
        norms = [
            m
            for name, m in self.base_model(model).named_children()
            if "norm" in type(m).__name__.lower() or name in self.final_norm_names
        ]
        return norms[-1] if norms else None

    def through_final_norm(self, directions: torch.Tensor, norm: Any) -> torch.Tensor:
        """Residual directions (n, d) as the final norm passes them on, up to a positive per-token
        factor: centred and scaled by a LayerNorm; scaled by any other norm's elementwise gain,
        whatever its parametrisation (``weight``, Gemma's ``1 + weight``, none)."""
        import torch

        if norm is None:
            return directions
        if isinstance(norm, torch.nn.LayerNorm):
            directions = directions - directions.mean(dim=-1, keepdim=True)
            if norm.weight is None:
                return directions
            return directions * norm.weight.detach().float().to(directions.device)
        return directions * norm_gain(norm, directions.shape[-1]).to(directions.device)

    def tiny_config(self, **overrides: Any) -> Any:
        """A small transformers config of this architecture, for tests on random weights."""
        raise ConfigError(f"model {self.name!r} declares no architecture, so it has no tiny config")

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
        """Load from ``model_path`` if given, else from the hub id (cache first)."""
        source = self.check_weights(model_path)
        model, tokenizer = self.load_pretrained(source.location, dtype=dtype, device=device)
        revision = source.revision
        if revision is None:
            revision = (
                hf_loading.weights_revision(source.location)
                if source.local
                else (getattr(model.config, "_commit_hash", None) or "unknown")
            )
        return self.wrap(
            model, tokenizer, model_id=source.location, revision=revision, dtype=dtype, device=device
        )

    def load_pretrained(self, source: str, *, dtype: str, device: str, **kwargs: Any) -> tuple[Any, Any]:
        """(model, tokenizer) via AutoModelForCausalLM / AutoTokenizer from a folder or hub id."""
        return hf_loading.load_pretrained(source, dtype=dtype, device=device, **kwargs)

    def check_local_folder(self, model_path: str | Path) -> WeightsSource:
        """A folder with config.json and weights files, or WeightsUnavailableError."""
        return hf_loading.check_local_folder(self, model_path)

    def check_hub_repo(self, repo_id: str) -> WeightsSource:
        """A cached hub repository, or one the hub will serve now; else WeightsUnavailableError, fast."""
        return hf_loading.check_hub_repo(self, repo_id)

    def tiny_config(self, **overrides: Any) -> Any:
        """A small transformers config of this architecture (``model_type``), for tests on random weights."""
        return hf_loading.tiny_config(self, **overrides)

    def facts(self) -> dict[str, Any]:
        return {**super().facts(), "model_type": self.model_type}


def norm_gain(norm: Any, width: int) -> torch.Tensor:
    """The elementwise gain of an RMS-style norm, whatever its parametrisation: the norm of a constant
    vector of RMS 2^10, which it divides back to exactly 1 (a power of two, so eps vanishes and no
    rounding enters)."""
    import torch

    reference = next(norm.parameters(), torch.empty(0))
    probe = torch.full((1, width), 1024.0, dtype=reference.dtype, device=reference.device)
    with torch.no_grad():
        return norm(probe)[0].detach().float()
