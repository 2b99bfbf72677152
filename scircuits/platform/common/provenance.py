"""What every stored artifact records about how it was made."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from pathlib import Path
from typing import Any

from scircuits.version import __version__


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def base_provenance() -> dict[str, Any]:
    return {"scircuits_version": __version__, "created": now_iso(), "host_pid": os.getpid()}


CACHE_ENV = "SCIRCUITS_CACHE"


def cache_root() -> Path:
    """Where scircuits caches converted weights and trained helper models: ``$SCIRCUITS_CACHE`` or
    ``~/.cache/scircuits``."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/scircuits").expanduser()
