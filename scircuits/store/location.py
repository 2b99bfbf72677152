"""Where a store lives: a local folder or an fsspec URL. Opening, locking and measuring it."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import zarr
import zarr.errors

from scircuits.files import Flock
from scircuits.store.errors import DamagedStoreError, NotAStoreError, StoreLockedError
from scircuits.store.format import ARRAYS, FORMAT, FORMAT_VERSION, READABLE_VERSIONS


def local_path(path: str | os.PathLike[str]) -> Path | None:
    """The local folder for a path or file:// URL; None for any other fsspec URL."""
    text = os.fspath(path)
    if text.startswith("file://"):
        return Path(text[len("file://") :])
    if "://" in text:
        return None
    return Path(text)


def open_group(
    path: str | os.PathLike[str],
    mode: str,
    storage_options: dict[str, Any] | None = None,
    attributes: dict[str, Any] | None = None,
):
    """zarr.open_group for a local folder or an fsspec URL; ``attributes`` are written with a new group
    in the same file, so a new store never exists without its format attributes."""
    text = os.fspath(path)
    local = local_path(text)
    extra: dict[str, Any] = {} if attributes is None else {"attributes": attributes}
    with warnings.catch_warnings():
        # zarr warns about files it does not know (our writer's temporary files); they are harmless.
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy")
        if local is not None:
            return zarr.open_group(str(local), mode=mode, zarr_format=3, **extra)
        return zarr.open_group(text, mode=mode, zarr_format=3, storage_options=storage_options, **extra)


def read_group(path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None):
    """Open a store read-only, checking that it is a format-v1 scircuits activation store."""
    local = local_path(path)
    if local is not None and not local.exists():
        raise NotAStoreError(f"{path}: no such activation store (the path does not exist)")
    try:
        group = open_group(path, "r", storage_options)
        attrs = dict(group.attrs)
    except (zarr.errors.BaseZarrError, OSError, ValueError, KeyError) as exc:  # no group, or a broken one
        raise NotAStoreError(
            f"{path} is not an activation store: no Zarr v3 group could be opened there ({exc})"
        ) from None
    except (TypeError, AttributeError):  # zarr.json is JSON but not an object, or its attributes are not
        raise DamagedStoreError(
            f"{path}/zarr.json is not a Zarr group's metadata (a JSON object with an 'attributes' object); "
            "the store is damaged: restore the file, or delete the store and collect it again"
        ) from None
    check_format(path, attrs)
    missing = []
    for name in ARRAYS:
        try:
            group[name]
        except KeyError:
            missing.append(name)
        except (zarr.errors.BaseZarrError, OSError, ValueError, TypeError) as exc:  # a damaged zarr.json
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise NotAStoreError(
                f"{path}: the metadata of array {name!r} cannot be read ({reason}); the store is damaged: "
                "delete it and collect it again"
            ) from None
    if missing:
        raise NotAStoreError(f"{path}: activation store is missing the array(s) {', '.join(missing)}")
    return group


def check_format(path: Any, attrs: dict[str, Any], *, writing: bool = False) -> None:
    """A scircuits store of a version this code reads (``writing``: of the version it writes)."""
    fmt = attrs.get("format")
    if fmt != FORMAT:
        raise NotAStoreError(
            f"{path} is a Zarr group but not a scircuits activation store "
            f"(its 'format' attribute is {fmt!r}, expected {FORMAT!r})"
        )
    version = attrs.get("format_version")
    if writing and version in READABLE_VERSIONS and version != FORMAT_VERSION:
        raise NotAStoreError(
            f"{path}: activation store format_version {version!r} was written by an older scircuits; "
            f"it can be read but not appended to (this scircuits writes version {FORMAT_VERSION}). "
            "Finish it with the version that started it, or collect again into another --out"
        )
    if version not in READABLE_VERSIONS:
        hint = "upgrade scircuits" if isinstance(version, int) and version > FORMAT_VERSION else "rewrite it"
        raise NotAStoreError(
            f"{path}: activation store format_version {version!r} is not supported "
            f"(this scircuits reads versions {', '.join(map(str, READABLE_VERSIONS))}); {hint}"
        )


def lock_store(folder: Path) -> Flock:
    """An exclusive flock on the store folder itself, released when the process dies (even by
    SIGKILL); refused with StoreLockedError while another process holds it."""
    lock = Flock.acquire(folder)
    if lock is None:
        raise StoreLockedError(
            f"{folder}: another process is writing to this store; wait for it or write elsewhere"
        )
    return lock


def remove_partial_files(folder: Path) -> int:
    """Delete temporary files that a killed zarr write left behind (zarr writes via rename)."""
    removed = 0
    for tmp in folder.rglob("*.partial"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def size_on_disk(path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> int:
    local = local_path(path)
    if local is not None:
        return sum(f.stat().st_size for f in local.rglob("*") if f.is_file())
    import fsspec

    fs, root = fsspec.core.url_to_fs(os.fspath(path), **(storage_options or {}))
    return int(fs.du(root, total=True))
