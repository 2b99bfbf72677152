"""Folders at an fsspec URL (``s3://bucket/key``, ``memory://...``): joining paths and a writer's lock.

A remote filesystem has no ``flock``: the lock is an object, ``<url>/.scircuits-lock``, created with
an exclusive write (fsspec's ``mode="create"``; on S3 a conditional put, ``If-None-Match: *``, which
the server refuses when the object exists). Its content names the holder (host, pid, time, token);
``release`` deletes it when it is still the holder's. A process killed while holding it leaves the
object behind: a lock left by a process of this host that no longer runs is taken over; any other
is refused with its holder named, and it is for the user to delete it once that holder is gone.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import socket
import uuid
from typing import Any

from scircuits.store.errors import StoreError, StoreLockedError
from scircuits.store.location import local_path

LOCK_OBJECT = ".scircuits-lock"


def is_url(path: str | os.PathLike[str]) -> bool:
    """True for an fsspec URL other than ``file://`` (a local path is not a URL)."""
    return local_path(path) is None


# the schemes a store, a checkpoint folder or an output folder may use (docs/scale.md): S3, and memory://
# from the Python API; file:// is a local path
SUPPORTED_SCHEMES = ("s3", "s3a", "memory")
SUPPORTED_URLS = "a local path or an s3://bucket/key URL (memory:// from the Python API; docs/scale.md)"


def check_url(url: str | os.PathLike[str], option: str = "", error: type[Exception] = StoreError) -> None:
    """Refuse, in one line, a URL this platform cannot use: a scheme other than s3:// or memory://
    (fsspec would raise 'Protocol not known', or reach a server such as the Hub's that is no folder
    store), or one with no bucket/path after the scheme (a bare ``s3://``). A local path passes."""
    text = os.fspath(url)
    if not is_url(text):
        return
    scheme, _, rest = text.partition("://")
    where = f"{option} {text}" if option else text
    if scheme.lower() not in SUPPORTED_SCHEMES:
        raise error(f"{where}: {scheme}:// URLs are not supported; give {SUPPORTED_URLS}")
    if not rest.strip("/"):
        what = (
            "a bucket and key (s3://bucket/key)" if scheme.lower() != "memory" else "a path (memory://name)"
        )
        raise error(f"{where}: the URL names no location; give {what}")


def url_join(base: str | os.PathLike[str], *parts: str) -> str:
    """``base`` and ``parts`` joined with ``/`` (``Path`` would fold the ``//`` of ``s3://``)."""
    text = os.fspath(base).rstrip("/")
    return "/".join([text, *(p.strip("/") for p in parts if p)])


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path on it; a missing driver (``s3fs`` for s3://) is
    one line naming the extra to install."""
    import fsspec

    check_url(url)
    try:
        return fsspec.core.url_to_fs(url, **(storage_options or {}))
    except ImportError as exc:
        scheme = url.split("://", 1)[0]
        hint = (
            "pip install 'scircuits[s3]'" if scheme in ("s3", "s3a") else f"install fsspec's {scheme} driver"
        )
        raise StoreError(f"{url}: cannot open a {scheme}:// URL ({exc}); {hint}") from None


def transport_errors() -> tuple[type[BaseException], ...]:
    """What reaching a remote filesystem may raise: OSError (s3fs turns S3's answers into it) and, when
    botocore is installed, its own errors (an unreachable endpoint, missing credentials)."""
    try:
        from botocore.exceptions import BotoCoreError
    except ImportError:
        return (OSError,)
    return (OSError, BotoCoreError)


def unreachable(url: str, exc: BaseException) -> StoreError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return StoreError(
        f"{url}: cannot reach it ({reason}); check the URL, the credentials and AWS_ENDPOINT_URL "
        "(docs/scale.md)"
    )


def pid_alive(pid: int) -> bool:
    """Whether a process of this host with that id runs (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RemoteLock:
    """An exclusive lock on the folder at ``url``: a second writer is refused at once (see module).

    ``error`` is the exception class raised when the lock is held (the store's own, or the artifact
    folders' one of the caller).
    """

    def __init__(
        self,
        url: str,
        what: str = "store",
        *,
        storage_options: dict[str, Any] | None = None,
        error: type[Exception] = StoreLockedError,
    ) -> None:
        self.url = url
        self._fs, root = filesystem(url, storage_options)
        self._path = f"{root.rstrip('/')}/{LOCK_OBJECT}"
        self._token: str | None = None
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "token": uuid.uuid4().hex,
        }
        blob = (json.dumps(holder, indent=2) + "\n").encode()
        for attempt in range(2):
            try:
                self._fs.pipe_file(self._path, blob, mode="create")
            except FileExistsError:
                held = self._holder()
                stale = (
                    held is not None
                    and held.get("host") == holder["host"]
                    and isinstance(held.get("pid"), int)
                    and not pid_alive(held["pid"])
                )
                if stale and attempt == 0:  # left by a killed process of this host: take it over
                    self._fs.rm_file(self._path)
                    continue
                who = (
                    f"process {held.get('pid')} on {held.get('host')} since {held.get('created')}"
                    if held
                    else "another process"
                )
                raise error(
                    f"{url}: another scircuits process is writing this {what} ({who}); wait for it to "
                    f"finish or write elsewhere. If that process is gone, delete {url_join(url, LOCK_OBJECT)}"
                ) from None
            except transport_errors() as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise error(
                    f"{url}: cannot write the lock object ({reason}); check the URL, the credentials and "
                    "AWS_ENDPOINT_URL (docs/scale.md), or write elsewhere"
                ) from None
            self._token = holder["token"]
            return

    def _holder(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self._fs.cat_file(self._path))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def release(self) -> None:
        """Delete the lock object if it is still this holder's."""
        if self._token is None:
            return
        token, self._token = self._token, None
        try:
            held = self._holder()
            if held is not None and held.get("token") == token:
                with contextlib.suppress(FileNotFoundError):
                    self._fs.rm_file(self._path)
        except transport_errors() as exc:  # the server went away: the command's own error says more
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            lock = url_join(self.url, LOCK_OBJECT)
            logging.getLogger("scircuits.store").warning(
                f"warning: could not delete the lock object {lock} ({reason}); this host's next command "
                "takes it over once the server answers"
            )

    def __enter__(self) -> RemoteLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RemotePath:
    """The few ``pathlib.Path`` operations a collection's manifest and folders need, on a URL:
    ``/``, ``name``, ``parent``, ``exists``, ``is_file``, ``is_dir``, ``iterdir``, ``read_text``,
    ``write_text`` (one PUT: whole or absent) and ``mkdir`` (nothing to do on object storage)."""

    def __init__(self, url: str, fs: Any = None) -> None:
        if fs is None:
            check_url(url)
        self.url = url.rstrip("/")
        self._fs, self._path = (fs, self.url.split("://", 1)[1]) if fs is not None else filesystem(self.url)
        self._path = self._path.rstrip("/")

    def __truediv__(self, name: str) -> RemotePath:
        return RemotePath(url_join(self.url, name), self._fs)

    def __str__(self) -> str:
        return self.url

    def __fspath__(self) -> str:
        return self.url

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def parent(self) -> RemotePath:
        head = self.url.rsplit("/", 1)[0]
        return RemotePath(head, self._fs) if "://" in head and not head.endswith(":/") else self

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self._fs.invalidate_cache(self._path)  # another process may have written since
        try:
            return getattr(self._fs, method)(self._path, *args, **kwargs)
        except FileNotFoundError:
            raise
        except transport_errors() as exc:
            raise unreachable(self.url, exc) from None

    def exists(self) -> bool:
        return bool(self._call("exists"))

    def is_file(self) -> bool:
        return bool(self._call("isfile"))

    def is_dir(self) -> bool:
        return bool(self._call("isdir"))

    def iterdir(self) -> list[RemotePath]:
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self._call("ls", detail=False)]
        return [self / name for name in names if name and name != LOCK_OBJECT]

    def read_text(self) -> str:
        return bytes(self._call("cat_file")).decode()

    def write_text(self, text: str) -> None:
        self._call("pipe_file", text.encode())

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Object storage has no folders: a key's prefix exists once an object is under it."""


def as_location(path: str | os.PathLike[str]) -> Any:
    """``Path`` for a local path, :class:`RemotePath` for a URL."""
    local = local_path(path)
    return local if local is not None else RemotePath(os.fspath(path))
