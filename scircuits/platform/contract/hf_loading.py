"""The shared Hugging Face loader behind ``HFModelAdapter``: weights from a local folder or the hub
(cache), with provenance.

``default_weights_check`` (``ModelAdapter.check_weights``) answers "can these weights be loaded
here?" cheaply (no weights are read), so a pipeline can fail before any heavy work;
``HFModelAdapter.load`` loads them with ``load_pretrained``. torch and transformers are imported
inside the functions. Part of the contract: it imports no other part of the platform.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scircuits.platform.contract.errors import ConfigError, DataFormatError, WeightsUnavailableError

if TYPE_CHECKING:
    import torch

    from scircuits.platform.contract.models import ModelAdapter

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
# Above this many bytes of weights, a local folder's revision hashes a sample of each file.
FULL_HASH_LIMIT = 2 << 30
SAMPLE_BYTES = 64 << 20

DTYPES = ("float32", "bfloat16", "float16")

# Sizes of the tiny test models, by the names every transformers config understands
# (``attribute_map`` translates them, e.g. hidden_size -> n_embd for GPT-2).
TINY_SIZES: Mapping[str, int] = {
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "head_dim": 16,
    "max_position_embeddings": 512,
    "vocab_size": 128,
}


def torch_dtype(name: str) -> torch.dtype:
    import torch

    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def is_hf_offline() -> bool:
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    if flag.strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:
        return False


@dataclass(frozen=True)
class WeightsSource:
    """Where weights will be loaded from: a local folder, or a hub repo (cached or downloadable)."""

    location: str  # the folder, or the hub repo id
    local: bool
    revision: str | None  # known before loading: the snapshot commit of a cached repo


def weights_help(adapter: ModelAdapter, reason: str) -> str:
    repo = adapter.hf_id or adapter.name
    remote_note = f"NDIF serves {repo}" if adapter.remote else f"if NDIF serves {repo}"
    return (
        f"The weights of model {adapter.name!r} ({repo}) are not available: {reason}. "
        f"Supply them one of these ways: "
        f"--model-path DIR (a folder with config.json, the tokenizer and the weights, e.g. made with "
        f"`hf download {repo} --local-dir DIR` on a machine with network); "
        f"the Hugging Face cache (set HF_HOME to a cache that holds {repo}, or run once with network "
        f"and HF_HUB_OFFLINE unset so it is downloaded there); "
        f"or --remote to run the model on NDIF ({remote_note}; needs NDIF_API_KEY)."
    )


def _snapshot_commit(path: str | Path) -> str | None:
    match = re.search(r"snapshots[/\\]([0-9a-f]{40})(?:[/\\]|$)", str(path))
    return match.group(1) if match else None


def check_local_folder(adapter: ModelAdapter, model_path: str | Path) -> WeightsSource:
    folder = Path(model_path).expanduser()
    if not folder.is_dir():
        raise WeightsUnavailableError(weights_help(adapter, f"--model-path {folder} is not a folder"))
    if not (folder / "config.json").is_file():
        raise WeightsUnavailableError(weights_help(adapter, f"{folder} has no config.json"))
    files = [p for p in folder.iterdir() if p.is_file()]
    if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
        raise WeightsUnavailableError(
            weights_help(adapter, f"{folder} holds no weights file (*.safetensors or *.bin)")
        )
    check_no_code_or_pickles(folder, files)
    return WeightsSource(str(folder), local=True, revision=_snapshot_commit(folder.resolve()))


PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_no_code_or_pickles(folder: Path, files: list[Path]) -> None:
    """Refuse, before loading, a folder whose loading would run code from it: remote code named by an
    ``auto_map`` in config.json or tokenizer_config.json, or weights only in pickle files (unpickling
    runs code). scircuits never passes trust_remote_code and loads weights as safetensors only."""
    for name in ("config.json", "tokenizer_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError, OSError):
            raise ConfigError(
                f"{path} is not readable JSON; give a model folder saved by transformers"
            ) from None
        if isinstance(data, dict) and data.get("auto_map"):
            classes = ", ".join(map(str, data["auto_map"]))
            raise ConfigError(
                f"{path} names custom code (auto_map: {classes}), which scircuits never runs (no "
                "trust_remote_code): use a model whose architecture transformers ships, or write a model "
                "adapter plugin for it (docs/plugins.md)"
            )
    pickles = sorted(p.name for p in files if p.suffix in PICKLED_WEIGHTS)
    if pickles and not any(p.suffix == ".safetensors" for p in files):
        raise ConfigError(
            f"{folder} holds its weights only as pickles ({', '.join(pickles)}), which scircuits never loads "
            "(unpickling can run code): convert them to safetensors on a machine you trust, e.g. "
            "`AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(DIR)` (transformers writes "
            "model.safetensors), then remove the .bin files"
        )


class HubUnreachable(Exception):
    """Why the hub cannot serve a repository now (wrapped into a user-facing error by the callers)."""


def hub_revision(repo_id: str) -> str | None:
    """The hub's current commit of ``repo_id``; HubUnreachable, fast, when it cannot serve it."""
    if is_hf_offline():
        raise HubUnreachable("the hub is offline (HF_HUB_OFFLINE=1)")
    from huggingface_hub import model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        info = model_info(repo_id, timeout=10)
    except GatedRepoError:
        raise HubUnreachable(
            f"{repo_id} is gated: accept its licence on huggingface.co and set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise HubUnreachable(
            f"the hub has no repository {repo_id} (or it is private: set HF_TOKEN)"
        ) from None
    except Exception as exc:
        raise HubUnreachable(f"the hub cannot be reached ({type(exc).__name__}: {exc})") from None
    return getattr(info, "sha", None)


def check_hub_repo(adapter: ModelAdapter, repo_id: str) -> WeightsSource:
    """A cached repo, or one the hub will serve now; else WeightsUnavailableError, fast."""
    from huggingface_hub import try_to_load_from_cache

    config_path = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(config_path, str):
        cached = [f for f in WEIGHT_FILES if isinstance(try_to_load_from_cache(repo_id, f), str)]
        if cached:
            return WeightsSource(repo_id, local=False, revision=_snapshot_commit(config_path))
    try:
        revision = hub_revision(repo_id)
    except HubUnreachable as exc:
        raise WeightsUnavailableError(
            weights_help(adapter, f"{repo_id} is not in the Hugging Face cache and {exc}")
        ) from None
    return WeightsSource(repo_id, local=False, revision=revision)


def check_hub_config(adapter: ModelAdapter, repo_id: str) -> str | None:
    """Remote execution needs only the config and tokenizer here: cached, or from the hub now.
    Returns the repository's commit when known."""
    from huggingface_hub import try_to_load_from_cache

    config_path = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(config_path, str):
        return _snapshot_commit(config_path)
    try:
        return hub_revision(repo_id)
    except HubUnreachable as exc:
        raise WeightsUnavailableError(
            f"--remote runs {adapter.name!r} on NDIF but needs its config and tokenizer ({repo_id}) here: "
            f"they are not in the Hugging Face cache and {exc}. Connect to the network, set HF_HOME to a "
            "cache that holds them, or pass --model-path DIR with config.json and the tokenizer files."
        ) from None


def check_weights_available(adapter: ModelAdapter, model_path: str | Path | None = None) -> WeightsSource:
    """Where ``adapter``'s weights would load from (``adapter.check_weights``), or
    WeightsUnavailableError naming the ways to supply them."""
    return adapter.check_weights(model_path)


def default_weights_check(adapter: ModelAdapter, model_path: str | Path | None = None) -> WeightsSource:
    """``ModelAdapter.check_weights``'s default: a local folder, or the hub repository ``hf_id``."""
    if model_path is not None:
        return check_local_folder(adapter, model_path)
    if os.path.isdir(os.path.expanduser(adapter.hf_id)):  # an hf: adapter named by a local folder
        return check_local_folder(adapter, os.path.expanduser(adapter.hf_id))
    if not adapter.hf_id:
        raise WeightsUnavailableError(weights_help(adapter, "the adapter names no hub repository"))
    return check_hub_repo(adapter, adapter.hf_id)


def weights_revision(folder: str | Path) -> str:
    """Hash of a local folder's weights files: sha256 of their bytes, sampled for very large models."""
    folder = Path(folder)
    commit = _snapshot_commit(folder.resolve())
    if commit:
        return commit
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    total = sum(p.stat().st_size for p in files)
    sampled = total > FULL_HASH_LIMIT
    digest = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode())
        with open(path, "rb") as fh:
            if not sampled:
                while block := fh.read(1 << 22):
                    digest.update(block)
            else:
                digest.update(fh.read(SAMPLE_BYTES))
                fh.seek(max(size - SAMPLE_BYTES, 0))
                digest.update(fh.read(SAMPLE_BYTES))
    return ("sha256-sampled:" if sampled else "sha256:") + digest.hexdigest()


def config_sizes(config: Any) -> tuple[int, int]:
    """(n_layers, d_model) from a transformers config (text config for multimodal ones)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)
    d_model = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)
    if not n_layers or not d_model:
        raise ConfigError(f"cannot read the number of layers and the width from {type(config).__name__}")
    return int(n_layers), int(d_model)


def load_pretrained(source: str, *, dtype: str, device: str, **kwargs: Any) -> tuple[Any, Any]:
    """(model, tokenizer) via AutoModelForCausalLM / AutoTokenizer from a folder or hub id."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    placement = {} if device == "cpu" else {"device_map": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype(dtype), **placement, **kwargs)
    except SafetensorError as exc:  # a truncated or overwritten model.safetensors
        raise DataFormatError(
            f"{source}: the model's weights cannot be read ({str(exc).splitlines()[0]}); the .safetensors "
            "file is damaged or incomplete: download or save the model again"
        ) from None
    return model, tokenizer


def tiny_config(adapter: ModelAdapter, **overrides: Any) -> Any:
    """A small randomly-initialisable config of ``adapter``'s architecture (``model_type``).

    The common sizes of TINY_SIZES are applied where the architecture has them, then the adapter's
    own ``tiny_overrides``, then ``overrides``.
    """
    from transformers import AutoConfig

    model_type = getattr(adapter, "model_type", "")
    if not model_type:
        raise ConfigError(f"model {adapter.name!r} declares no model_type, so it has no tiny config")
    default = AutoConfig.for_model(model_type)
    attribute_map = getattr(type(default), "attribute_map", {}) or {}
    sizes = {attribute_map.get(k, k): v for k, v in TINY_SIZES.items() if hasattr(default, k)}
    sizes.update(getattr(adapter, "tiny_overrides", {}) or {})
    sizes.update(overrides)
    return AutoConfig.for_model(model_type, **sizes)
