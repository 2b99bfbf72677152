"""Every non-public ``scircuits`` name this plugin uses, in one place (the lead maps them at merge).

- ``ConfigError`` (scircuits.platform.errors): a user error the CLI prints as one line, exit code 2.
- ``now_iso`` (scircuits.platform.provenance): the timestamp format of every artifact.
- ``cache_root`` (scircuits.plugins.models.smollm2): ``$SCIRCUITS_CACHE`` or ~/.cache/scircuits.
- ``check_local_folder`` (scircuits.platform.hf_loading): the early "can this folder be loaded?" check
  the pipeline asks an adapter for (``check_weights``), returning its WeightsSource.
"""

from __future__ import annotations

from scircuits.platform.errors import ConfigError as UserError
from scircuits.platform.hf_loading import check_local_folder
from scircuits.platform.provenance import now_iso
from scircuits.plugins.models.smollm2 import cache_root

__all__ = ["UserError", "cache_root", "check_local_folder", "now_iso"]
