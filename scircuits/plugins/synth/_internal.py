"""Every non-public ``scircuits`` name this plugin uses, in one place (the lead maps them at merge).

- ``ConfigError`` (scircuits.platform.errors): a user error the CLI prints as one line, exit code 2.
- ``now_iso`` (scircuits.platform.provenance): the timestamp format of every artifact.
- ``cache_root`` (scircuits.plugins.models.smollm2): ``$SCIRCUITS_CACHE`` or ~/.cache/scircuits.
- ``check_local_folder`` (scircuits.platform.hf_loading): the early "can this folder be loaded?" check
  the pipeline asks an adapter for (``check_weights``), returning its WeightsSource.
- ``load_sae`` (scircuits.platform.checkpoint): an SAE checkpoint of any built-in variant, for scoring.
"""

from __future__ import annotations

from scircuits.platform.errors import ConfigError as UserError
from scircuits.platform.hf_loading import check_local_folder
from scircuits.platform.provenance import now_iso
from scircuits.plugins.models.smollm2 import cache_root

__all__ = ["UserError", "cache_root", "check_local_folder", "load_sae", "now_iso"]


def load_sae(path):  # type: ignore[no-untyped-def]
    """(module with encode/W_dec, info) of an SAE checkpoint (scircuits.platform.checkpoint.load_sae)."""
    from scircuits.platform.checkpoint import load_sae as load

    return load(path)
