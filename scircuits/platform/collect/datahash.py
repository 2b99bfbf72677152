"""The content hash of the data file(s) a benchmark reads (its ``data`` option): part of a store's
identity, so that an edited data file is never taken for the one a store was collected from."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def data_sha256(options: Any) -> str | None:
    """sha256 of the ``data`` option's file, or of every file in its folder (names and contents, in
    name order); None when the benchmark reads no local data (generated or from the hub)."""
    data = options.get("data") if isinstance(options, dict) else getattr(options, "data", None)
    if not data:
        return None
    path = Path(str(data)).expanduser()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        if not file.is_file():
            continue
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode() + b"\0")
        with open(file, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()
