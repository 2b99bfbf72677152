"""Local files written whole or not at all, and flock locks: the primitives every layer uses.

This module imports only the standard library, so the store (at the bottom) and the platform share
it. Object storage (fsspec URLs) has its own write path: one PUT is whole or absent there
(``scircuits.store.remote``).
"""

from __future__ import annotations

import errno
import fcntl
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


class Flock:
    """A non-blocking ``flock`` on a lock file (created if missing) or a folder, released by
    :meth:`release` or when the process ends (even by SIGKILL).

    ``shared``: several holders at once, none while an exclusive one holds it. A shared lock on a
    lock file the process cannot open for writing (a read-only folder) is taken on a read-only
    descriptor: flock needs no write access.
    """

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: str | os.PathLike[str], *, shared: bool = False) -> Flock | None:
        """The lock, or None when another process holds it in a conflicting mode. Raises the
        OSError of a path that cannot be opened."""
        target = Path(path)
        if target.is_dir():
            fd = os.open(target, os.O_RDONLY)
        else:
            try:
                fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                if (
                    not shared
                    or exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS)
                    or not target.exists()
                ):
                    raise
                fd = os.open(target, os.O_RDONLY)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return cls(fd)

    @classmethod
    def is_held(cls, path: str | os.PathLike[str]) -> bool:
        """True while some process holds a lock on ``path`` (which must exist)."""
        lock = cls.acquire(path)
        if lock is None:
            return True
        lock.release()
        return False

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
