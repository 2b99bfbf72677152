"""Artifact folders (SAE checkpoints, causal results, runs) at an fsspec URL such as ``s3://bucket/sae``.

Object storage has no rename, so a folder cannot be published there by one rename as
:func:`~scircuits.platform.common.artifacts.publish_dir` does locally. A remote folder is instead a
series of generations and a pointer::

    <url>/.scircuits-current.json     {"generation": "g-<UTC time>-<token>", ...}   one object
    <url>/g-<UTC time>-<token>/...    the folder's files, as the command wrote them locally

A command writing to a URL works in a local staging folder (the URL's current generation
downloaded first, so that a complete artifact is skipped and a saved training state resumed), then
uploads it as a new generation and only then rewrites the pointer (one PUT, atomic). A kill at any
moment leaves the pointer on the previous generation, whole; generations no pointer names are
removed by the next publish. The writer holds the URL's lock object (``scircuits.store.remote``)
throughout, so a second writer is refused.

A URL without a pointer (a checkpoint uploaded by other tools) is read as a plain folder.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scircuits.errors import ScircuitsError
from scircuits.platform.common.artifacts import ArtifactError
from scircuits.platform.common.logs import ROOT, get_logger
from scircuits.platform.contract.errors import ResumableError
from scircuits.store.remote import LOCK_OBJECT, RemoteLock, filesystem, is_url, transport_errors, url_join

log = get_logger(__name__)
POINTER = ".scircuits-current.json"
GENERATION_PREFIX = "g-"

__all__ = [
    "POINTER",
    "checkpoint_folders",
    "fetch_folder",
    "is_url",
    "join_path",
    "publish_folder",
    "remote_out",
    "shown",
    "staging_dir",
]
# each staging folder of this process (its path as text) and the URL it stands for: what the
# commands print names the URL the user gave, not the local cache
_STAGED: dict[str, str] = {}


def join_path(base: str, name: str) -> str:
    """``base/name`` for a local folder or a URL (``Path`` would fold the ``//`` of ``s3://``)."""
    return url_join(base, name) if is_url(base) else str(Path(base) / name)


def cache_root() -> Path:
    """Where remote folders are staged and fetched: ``$SCIRCUITS_REMOTE_CACHE`` or
    ``~/.cache/scircuits/remote``."""
    given = os.environ.get("SCIRCUITS_REMOTE_CACHE")
    return Path(given).expanduser() if given else Path.home() / ".cache" / "scircuits" / "remote"


def staging_dir(url: str, role: str) -> Path:
    """The local folder standing for ``url`` (``role``: "out" for a writer, "in" for a reader)."""
    digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    name = url.rstrip("/").rsplit("/", 1)[-1] or "root"
    return cache_root() / role / digest / name  # the URL's own name: a run directory's name matters


def _current(fs: Any, root: str) -> str | None:
    """The generation the pointer names; None when there is no pointer."""
    url = f"{fs.unstrip_protocol(root)}/{POINTER}" if hasattr(fs, "unstrip_protocol") else f"{root}/{POINTER}"
    try:
        raw = fs.cat_file(f"{root}/{POINTER}")
    except FileNotFoundError:
        return None
    except transport_errors() as exc:  # credentials, the endpoint, the network: not the folder
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ArtifactError(
            f"{url} cannot be read ({reason}); check the credentials, AWS_ENDPOINT_URL and the network "
            "(docs/scale.md)"
        ) from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ArtifactError(f"{url} is not JSON ({exc}); the remote folder is damaged") from None
    generation = data.get("generation") if isinstance(data, dict) else None
    if not isinstance(generation, str) or not generation.startswith(GENERATION_PREFIX):
        raise ArtifactError(f"{url} names no generation; the remote folder is damaged")
    return generation


def _locate(fs: Any, root: str, *, within: bool) -> tuple[str, str | None]:
    """Where the folder at ``root`` is stored: (its source path, the generation read, or None for a
    plain folder). ``within``: a folder inside a published one (``<run url>/sae``) is read from the
    current generation of the nearest published folder above it, as the local path ``RUN/sae``."""
    generation = _current(fs, root)
    if generation:
        return f"{root}/{generation}", generation
    if fs.isdir(root) or not within:
        return root, None
    parts = root.split("/")
    for cut in range(len(parts) - 1, 0, -1):  # the bucket itself holds no pointer of ours
        above = "/".join(parts[:cut])
        generation = _current(fs, above)
        if generation:
            return f"{above}/{generation}/{'/'.join(parts[cut:])}", generation
    return root, None


def fetch_folder(url: str, dest: Path, *, option: str = "--sae") -> Path:
    """Download the folder at ``url`` (its current generation, a folder inside the current generation
    of a published folder above it, or the plain folder) into ``dest``, replacing what ``dest`` held;
    returns ``dest``. (``--out``: only the URL's own generation or plain folder.)"""
    fs, root = filesystem(url)
    root = root.rstrip("/")
    fs.invalidate_cache(root)
    try:
        source, generation = _locate(fs, root, within=option != "--out")
        if not fs.isdir(source):
            raise ArtifactError(f"{option} {url}: no such folder (nothing is stored under that URL)")
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for path in fs.find(source):
            rel = path[len(source) + 1 :]
            if not rel or (generation is None and rel.split("/", 1)[0].startswith(GENERATION_PREFIX)):
                continue
            if rel in (POINTER, LOCK_OBJECT):
                continue
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(path, str(target))
    except transport_errors() as exc:
        raise ArtifactError(f"{option} {url}: cannot read it ({exc})") from None
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def checkpoint_folders(url: str, marker: str) -> list[str]:
    """The URLs of the folders directly inside the folder at ``url`` that hold a file ``marker`` (the
    SAEs of `train --store COLLECTION --out URL`), sorted; [] when there are none or no such folder."""
    fs, root = filesystem(url)
    root = root.rstrip("/")
    fs.invalidate_cache(root)
    try:
        source, generation = _locate(fs, root, within=True)
        if not fs.isdir(source):
            return []
        names = []
        for entry in fs.ls(source, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if generation is None and name.startswith(GENERATION_PREFIX):
                continue
            if fs.isfile(f"{source}/{name}/{marker}"):
                names.append(name)
    except transport_errors() as exc:
        raise ArtifactError(f"--sae {url}: cannot read it ({exc})") from None
    return [url_join(url, name) for name in sorted(names)]


def publish_folder(local: Path, url: str) -> str:
    """Upload ``local`` as a new generation of ``url``, point the URL at it, then remove the
    generations no pointer names; returns the new generation's name."""
    fs, root = filesystem(url)
    root = root.rstrip("/")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    generation = f"{GENERATION_PREFIX}{stamp}-{uuid.uuid4().hex[:8]}"
    try:
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            rel = path.relative_to(local).as_posix()
            if path.name.startswith((".scircuits-lock", ".scircuits-group-lock")):  # at any depth
                continue
            fs.put_file(str(path), f"{root}/{generation}/{rel}")
        pointer = {
            "generation": generation,
            "published": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        fs.pipe_file(f"{root}/{POINTER}", (json.dumps(pointer, indent=2) + "\n").encode())
        fs.invalidate_cache(root)
        for entry in fs.ls(root, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith(GENERATION_PREFIX) and name != generation:
                fs.rm(entry, recursive=True)
    except transport_errors() as exc:
        raise ArtifactError(
            f"{url}: the upload failed ({exc}); the previous state there is unchanged, run again"
        ) from None
    return generation


@contextmanager
def remote_out(url: str, what: str, *, publish_interrupted: bool = False) -> Iterator[Path]:
    """For a command writing ``url``: hold its lock object, stage its current state in a local
    folder (yielded), and publish that folder when the block ends without an error.

    ``publish_interrupted``: a KeyboardInterrupt (Ctrl-C) publishes what the command left in the
    folder too, as a local interrupted run leaves it (``train``: its last saved state, for
    ``--resume``). While the block runs, the messages it logs and the errors it raises name ``url``
    where they would name the staging folder (``shown``)."""
    with RemoteLock(url, what, error=ArtifactError):  # the lock object makes the folder exist
        local = fetch_folder(url, staging_dir(url, "out"), option="--out")
        _STAGED[str(local)] = url.rstrip("/")
        before = set(_superseded(local))
        fetched = _contents(local)
        try:
            with _messages_name_the_url():
                yield local  # the command locks this folder as any local one
        except KeyboardInterrupt:
            if publish_interrupted and _contents(local) != fetched:
                log.info(f"[{what}] interrupted: publishing what it saved to {url}")
                publish_folder(local, url)
                log.info(f"[{what}] published; the same command with --resume continues from {url}")
            raise
        except ScircuitsError as exc:
            if len(exc.args) == 1 and isinstance(exc.args[0], str):
                exc.args = (shown(exc.args[0]),)
            if publish_interrupted and isinstance(exc, ResumableError) and _contents(local) != fetched:
                publish_folder(local, url)  # the state the error tells the user to --resume from
            raise
        # what the command moved aside (an artifact of other settings, or --force) is kept on the
        # object storage as it is kept locally: beside the URL, never deleted by the publish
        for aside in sorted(set(_superseded(local)) - before):
            kept = f"{url.rstrip('/')}{aside.name[len(local.name) :]}"
            publish_folder(aside, kept)
            shutil.rmtree(aside, ignore_errors=True)
            log.info(f"[{what}] {url} held {what} of other settings; moved it to {kept}")
        if fetched and _contents(local) == fetched:  # found up to date: nothing to upload again
            log.info(f"[{what}] {url} is unchanged; kept its current generation")
            return
        publish_folder(local, url)
        log.info(f"[{what}] published to {url}")


def shown(text: str) -> str:
    """``text`` with each staging folder of this process replaced by the URL it stands for (what a
    command prints names the URL given to it, not the local cache)."""
    for local in sorted(_STAGED, key=len, reverse=True):
        text = text.replace(local, _STAGED[local])
    return text


class _NameTheURL(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        named = shown(message)
        if named != message:
            record.msg, record.args = named, None
        return True


@contextmanager
def _messages_name_the_url() -> Iterator[None]:
    """The scircuits messages logged meanwhile name the URLs of the staging folders."""
    handlers = list(logging.getLogger(ROOT).handlers)
    rename = _NameTheURL()
    for handler in handlers:
        handler.addFilter(rename)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(rename)


def _contents(local: Path) -> dict[str, tuple[int, int]]:
    """Each file's (size, mtime) by its path in ``local``, lock files left out."""
    return {
        p.relative_to(local).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in local.rglob("*")
        if p.is_file() and not p.name.startswith((".scircuits-lock", ".scircuits-group-lock"))
    }


def _superseded(local: Path) -> list[Path]:
    return [p for p in local.parent.glob(f"{local.name}.superseded-*") if p.is_dir()]
