"""Local files written whole or not at all, and flock locks: the primitives every layer uses.

This module imports only the standard library, so the store (at the bottom) and the platform share
it. Object storage (fsspec URLs) has its own write path: one PUT is whole or absent there
(``scircuits.store.remote``).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def tmp_name(path: Path) -> Path:
    """The temporary sibling a process writes before renaming onto ``path`` (``.NAME.tmp-PID``: the
    artifact rules remove it once its process is gone)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (the folder's entry list is flushed)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # a folder that cannot be opened for reading: the rename is done, just not synced
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.EROFS):  # not syncable (some filesystems)
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder for the caller to write; on success it is synced
    and renamed onto ``path`` and the folder synced, on failure removed. Readers see the old file or
    the new one, whole, even after a kill or a power loss."""
    final = Path(path)
    tmp = tmp_name(final)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


def write_atomic(path: str | os.PathLike[str], data: str | bytes | Callable[[IO[bytes]], object]) -> None:
    """Write ``data`` (text as UTF-8, bytes, or a function that writes into the open binary file, such
    as a figure's ``savefig``) to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        if isinstance(data, str):
            fh.write(data.encode())
        elif isinstance(data, bytes):
            fh.write(data)
        else:
            data(fh)
