"""The scircuits names this plugin uses, all public (``import scircuits``)."""

from __future__ import annotations

from typing import Any

from scircuits import ConfigError as UserError
from scircuits import cache_root, now_iso

__all__ = ["UserError", "cache_root", "check_local_folder", "load_sae", "now_iso"]


def check_local_folder(adapter: Any, model_path: Any) -> Any:
    """The adapter's early "can this folder be loaded?" check (``HFModelAdapter.check_local_folder``)."""
    return adapter.check_local_folder(model_path)


def load_sae(path: Any) -> Any:
    """(module with encode/W_dec, info) of an SAE checkpoint (``scircuits.load_sae``)."""
    import scircuits

    return scircuits.load_sae(path)
