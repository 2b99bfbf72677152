"""``hf:ORG/NAME``: any Hugging Face causal LM, its decoder blocks found from the loaded module tree.

The decoder blocks are the first ``nn.ModuleList`` whose length is the config's layer count; the
mlp and attention sites are the block children with the usual names. ``hf:/some/folder`` loads a
local folder (as ``--model-path`` does).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scircuits import ConfigError, HFModelAdapter, LoadedModel

MLP_NAMES = ("mlp", "feed_forward", "ffn", "mlp_block", "block_sparse_moe")
ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention", "attn_block")
BLOCK_LISTS = ("layers", "h", "blocks", "block", "layer")  # the names transformers gives a block list


def find_decoder_blocks(model: Any) -> tuple[str, dict[str, str], int]:
    """(blocks_path, site_paths, n_layers) of a transformers causal LM."""
    import torch

    n_layers, _ = HFModelAdapter.config_sizes(model.config)
    for path, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            block = module[0]
            children = dict(block.named_children())
            sites = {"resid": ""}
            for site, names in (("mlp", MLP_NAMES), ("attn", ATTN_NAMES)):
                found = next((n for n in names if n in children), None)
                if found is not None:
                    sites[site] = found
            return path, sites, n_layers
    raise ConfigError(
        f"no decoder blocks found in {type(model).__name__}: no nn.ModuleList of {n_layers} modules "
        "(the config's layer count). Write an adapter for it (see scircuits.HFModelAdapter)."
    )


def check_model_source(repo_id: str) -> None:
    """A local folder, or a name the hub could hold (ORG/NAME); a missing path or a file is refused."""
    path = Path(repo_id).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise ConfigError(
            f"--model hf:{repo_id} is a file: give the folder holding config.json and the weights, or a "
            "Hugging Face repository id (ORG/NAME)"
        )
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ConfigError(
            f"--model hf:{repo_id}: no such folder, and not a Hugging Face repository id (ORG/NAME)"
        ) from None


@dataclass(eq=False)
class GenericHFAdapter(HFModelAdapter):
    name: str = "hf:"
    description: str = "any Hugging Face causal LM: --model hf:ORG/NAME (blocks found automatically)"
    blocks_path: str = ""
    remote: bool = True  # whether NDIF serves a given repo is NDIF's to say

    def specialize(self, repo_id: str) -> GenericHFAdapter:
        if not repo_id:
            raise ConfigError("hf: needs a repository id or a folder, e.g. --model hf:EleutherAI/pythia-70m")
        check_model_source(repo_id)
        return dataclasses.replace(
            self, name=f"hf:{repo_id}", hf_id=repo_id, description=f"{repo_id} (generic Hugging Face adapter)"
        )

    def _site_of_module_path(self, name: str) -> tuple[int, str] | None:
        if self.blocks_path:
            return super()._site_of_module_path(name)
        # before the model loads, its block list is not known: read the usual layouts
        # (model.layers.N.mlp, transformer.h.N.attn, gpt_neox.layers.N, ...)
        parts = name.split(".")
        for index, part in enumerate(parts[:-1]):
            if part not in BLOCK_LISTS or not parts[index + 1].isdigit():
                continue
            layer, rest = int(parts[index + 1]), ".".join(parts[index + 2 :])
            if rest in ("", "resid"):
                return layer, "resid"
            if rest in (*MLP_NAMES, "mlp"):
                return layer, "mlp"
            if rest in (*ATTN_NAMES, "attn"):
                return layer, "attn"
        return None

    def resolved_for(self, model: Any) -> GenericHFAdapter:
        """This adapter with the block path, sites and sizes of the loaded ``model``."""
        blocks_path, sites, n_layers = find_decoder_blocks(model)
        _, d_model = self.config_sizes(model.config)
        return dataclasses.replace(
            self,
            blocks_path=blocks_path,
            site_paths=sites,
            n_layers=n_layers,
            d_model=d_model,
            model_type=getattr(model.config, "model_type", ""),
        )

    def load(
        self, *, model_path: str | None = None, dtype: str = "float32", device: str = "cpu"
    ) -> LoadedModel:
        if self.name == "hf:":
            raise ConfigError("name the model after the prefix: --model hf:ORG/NAME")
        loaded = super().load(model_path=model_path, dtype=dtype, device=device)
        loaded.adapter = self.resolved_for(loaded.model)
        return loaded
