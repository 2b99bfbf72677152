"""What names the bytes of a folder of weights (or one file), cheaply enough to do on every command.

A file's sha256 is computed once and remembered by its stat (resolved path, size, mtime in ns,
inode), in this process and in ``<cache>/file-hashes.json``, as git's index and make remember what
they read: a file rewritten in place keeps none of them (one modified in the last seconds is hashed
again each time, since a rewrite within the same mtime tick would keep them all). A file that is a
link into a Hugging Face cache's ``blobs/`` folder is named by its blob, which the cache names by the
content's hash (the sha256 of an LFS file, the git blob sha1 of a small one), so a model in the hub
cache is never read.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

from scircuits.files import write_atomic
from scircuits.platform.common.provenance import cache_root, file_sha256

CACHE_FILE = "file-hashes.json"
CACHE_ENTRIES = 4096  # the newest entries are kept
SETTLED_SECONDS = 2.0
HUB_BLOB = re.compile(r"^(?:[0-9a-f]{64}|[0-9a-f]{40})$")

_known: dict[tuple[str, int, int, int], str] = {}


def content_hash(path: Path) -> str:
    """``blob:<name>`` for a file linked into a hub cache's blobs, else ``sha256:<hex>`` (remembered)."""
    target = path.resolve()
    if path.is_symlink() and target.parent.name == "blobs" and HUB_BLOB.match(target.name):
        return f"blob:{target.name}"
    stat = target.stat()
    key = (str(target), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key in _known:
        return _known[key]
    stored = _read_cache()
    entry = stored.get(key[0])
    if entry is not None and tuple(entry[:3]) == key[1:]:
        return _known.setdefault(key, str(entry[3]))
    digest = f"sha256:{file_sha256(target)}"
    # a file written within the last seconds may be written again within the same mtime tick: its
    # hash is not remembered until it has been still for a while (git's "racily clean" rule)
    if time.time() - stat.st_mtime > SETTLED_SECONDS:
        stored.pop(key[0], None)
        stored[key[0]] = [*key[1:], digest]
        _write_cache(stored)
        _known[key] = digest
    return digest


def weights_fingerprint(location: str | Path) -> str:
    """A short name of the bytes at ``location``: a file, or every file of a folder (hidden ones left
    out) with its path in the folder. ``missing`` when nothing is there; ``unreadable`` when a file
    cannot be read (the loader then says what is wrong)."""
    root = Path(location).expanduser()
    try:
        if root.is_file():
            return content_hash(root).split(":", 1)[1][:16]
        if not root.is_dir():
            return "missing"
        digest = hashlib.sha256()
        files = sorted(
            p
            for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        for path in files:
            digest.update(f"{path.relative_to(root).as_posix()}\0{content_hash(path)}\0".encode())
        return digest.hexdigest()[:16]
    except OSError:
        return "unreadable"


def _cache_path() -> Path:
    return cache_root() / CACHE_FILE


def _read_cache() -> dict[str, list[object]]:
    try:
        data = json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(entries: dict[str, list[object]]) -> None:
    """Best effort: a cache that cannot be written only means hashing again next time."""
    kept = dict(list(entries.items())[-CACHE_ENTRIES:])
    try:
        _cache_path().parent.mkdir(parents=True, exist_ok=True)
        write_atomic(_cache_path(), json.dumps(kept))
    except OSError:
        pass
