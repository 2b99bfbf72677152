"""One rule for every artifact folder the tool writes (SAE checkpoints, causal results, runs, ...).

- A folder the tool writes carries a marker file, ``.scircuits-artifact.json``, naming its kind and
  identity (the content key of the settings that made it). The tool only ever removes or overwrites
  a folder whose marker it wrote; anything else is refused with a message that says what to do.
- A folder made with other settings is never deleted: it is moved aside to a sibling
  ``<name>.superseded-<UTC time>`` folder, and the message says where.
- Writers hold an exclusive lock on the folder (``flock``, released when the process dies). A folder
  inside a run (or compare) folder is also covered by that container's lock: a writer there takes it
  shared, so it is refused while ``run`` holds it, and ``run`` is refused while it writes
  (:func:`enclosing_container`). The worker processes of a distributed writer hold a group lock
  (:func:`hold_for_group`) that keeps the folder refused until the last of them is gone.
- An ``--out`` that is, or holds, a folder the command reads is refused (:func:`check_out_apart`).
- Multi-file state is published by one rename (:func:`publish_dir`), and temporary files that a
  killed process left behind are removed when their process is gone (:func:`remove_orphans`).
- Writability is checked before heavy work (:func:`check_writable`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scircuits.errors import ConfigError, ScircuitsError
from scircuits.files import Flock, tmp_name, write_atomic
from scircuits.store.remote import is_url, pid_alive

MARKER_FILE = ".scircuits-artifact.json"
LOCK_FILE = ".scircuits-lock"
GROUP_LOCK_FILE = ".scircuits-group-lock"
# Kinds of artifact folder that hold other artifacts: writing inside one takes its lock (shared).
CONTAINER_KINDS = frozenset({"run", "compare"})
_TMP_PATTERN = re.compile(r"\.tmp-(\d+)$")


class ArtifactError(ScircuitsError):
    """An artifact folder cannot be used as asked: not ours, locked, or not writable."""


@dataclass(frozen=True)
class Marker:
    kind: str
    identity: str
    created: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "identity": self.identity, "created": self.created}


def check_distinct(paths: Sequence[str | Path], command: str) -> None:
    """ConfigError when one folder is given twice (compared by resolved path) to ``command``."""
    seen: set[Path] = set()
    for path in paths:
        key = Path(path).expanduser().resolve()
        if key in seen:
            raise ConfigError(f"{path} is given twice; {command} needs different runs")
        seen.add(key)


def read_marker(folder: Path) -> Marker | None:
    """The folder's marker, or None when it has none (or an unreadable one)."""
    try:
        data = json.loads((folder / MARKER_FILE).read_text())
        return Marker(kind=str(data["kind"]), identity=str(data["identity"]), created=str(data["created"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_marker(folder: Path, kind: str, identity: str) -> Marker:
    marker = Marker(kind=kind, identity=identity, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    write_atomic(folder / MARKER_FILE, json.dumps(marker.to_json(), indent=2) + "\n")
    return marker


def _user_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in (MARKER_FILE, LOCK_FILE, GROUP_LOCK_FILE))


def only_bookkeeping(folder: Path) -> bool:
    """True when ``folder`` holds nothing but the tool's marker and lock files (or does not exist)."""
    return not folder.is_dir() or not _user_files(folder)


@dataclass(frozen=True)
class Claimed:
    """What ``claim`` found: "new", "same" (made with the same identity: the caller may resume or
    skip), "superseded" (an earlier artifact of this kind was moved to ``moved_to``) or "forced"
    (files the tool did not write, or another kind of artifact, moved to ``moved_to`` by --force)."""

    state: str
    moved_to: Path | None = None


FORCE_HINT = "or pass --force to move it aside (nothing is deleted)"


def check_claim(folder: Path, kind: str, *, option: str = "--out", force: bool = False) -> None:
    """Raise what :func:`claim` would refuse, touching nothing: a command checks before its work and
    claims (moving a superseded artifact aside) only when it has something to write."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ArtifactError(f"{folder} is a file, not a folder: choose another {option}")
    if not folder.exists() or not _user_files(folder) or force:
        return
    marker = read_marker(folder)
    if marker is None:
        shown = ", ".join(_user_files(folder)[:3])
        raise ArtifactError(
            f"{folder} holds files scircuits did not write ({shown}...): it will not remove or "
            f"overwrite them; choose another {option}, move them away, {FORCE_HINT}"
        )
    if marker.kind != kind:
        raise ArtifactError(
            f"{folder} holds a {marker.kind} artifact, not a {kind}: choose another {option}, {FORCE_HINT}"
        )


def claim(folder: Path, kind: str, identity: str, *, option: str = "--out", force: bool = False) -> Claimed:
    """Make ``folder`` this artifact's home (see :class:`Claimed`).

    Refuses a folder holding files the tool did not write, or an artifact of another kind, unless
    ``force``: then that folder is moved aside as a superseded one would be.
    """
    folder = Path(folder)
    check_claim(folder, kind, option=option, force=force)
    if not folder.exists() or not _user_files(folder):
        check_writable(folder, option=option)
        write_marker(folder, kind, identity)
        return Claimed("new")
    marker = read_marker(folder)
    if marker is None or marker.kind != kind:  # refused above unless force
        aside = move_aside(folder)
        write_marker(folder, kind, identity)
        return Claimed("forced", aside)
    if marker.identity == identity:
        return Claimed("same")
    aside = move_aside(folder)
    write_marker(folder, kind, identity)
    return Claimed("superseded", aside)


def move_aside(folder: Path, *, recreate: bool = True) -> Path:
    """Rename ``folder`` to a new sibling ``<name>.superseded-<time>``; the folder is recreated empty
    but for its lock files, or (``recreate`` False) not at all, its lock files going with it."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = folder.with_name(f"{folder.name}.superseded-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = folder.with_name(f"{folder.name}.superseded-{stamp}-{n}")
    os.replace(folder, target)
    if not recreate:
        return target
    folder.mkdir()
    for name in (LOCK_FILE, GROUP_LOCK_FILE):  # a lock held on the folder stays held on the new one:
        if (target / name).exists():  # flock follows the file, which is moved back, not reopened
            os.replace(target / name, folder / name)
    return target


# Folders this process holds a lock on (resolved): a writer inside one of them needs no second lock.
_HELD: dict[Path, int] = {}


def _key(folder: Path) -> Path:
    return Path(os.path.abspath(folder)).resolve()


def enclosing_container(folder: Path) -> tuple[Path, str] | None:
    """The nearest folder above ``folder`` whose marker names a container kind (a run directory, a
    compare folder), with that kind; None when there is none."""
    for parent in _key(folder).parents:
        marker = read_marker(parent)
        if marker is not None and marker.kind in CONTAINER_KINDS:
            return parent, marker.kind
    return None


def _group_alive(folder: Path) -> bool:
    """True while worker processes of an earlier distributed writer still hold ``folder``'s group lock."""
    path = folder / GROUP_LOCK_FILE
    return path.exists() and Flock.is_held(path)


class FolderLock:
    """An exclusive lock on an artifact folder; a second writer is refused at once.

    ``shared``: a reader's lock (several readers at once, no writer). A folder inside a run or compare
    folder also takes that container's lock, shared, unless this process holds it already (``run``
    writing its own stages), so a command writing inside a run is refused while ``run`` writes it.
    """

    def __init__(
        self, folder: Path, what: str = "artifact", option: str = "--out", *, shared: bool = False
    ) -> None:
        folder = Path(folder)
        self._lock: Flock | None = None
        self._container: FolderLock | None = None
        self._key: Path | None = None
        self._folder = folder
        # what this lock made, removed at release when the folder never became an artifact (a refused
        # command leaves no lock file in a folder that is not scircuits', nor an empty folder)
        self._made_folder = not shared and not folder.exists()
        self._made_lock_file = not shared and not (folder / LOCK_FILE).exists()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            lock = Flock.acquire(folder / LOCK_FILE, shared=shared)
        except OSError as exc:
            raise ArtifactError(
                f"{folder}: cannot write here ({describe_os_error(exc)}); choose another {option}"
            ) from None
        if lock is None:
            raise ArtifactError(
                f"{folder}: another scircuits process is writing this {what}; wait for it to finish "
                "or write elsewhere"
            )
        self._lock = lock
        if not shared and _group_alive(folder):
            self.release()
            raise ArtifactError(
                f"{folder}: worker processes of an earlier distributed run still write this {what}; "
                "wait for them to end (or end them), then run again"
            )
        self._key = _key(folder)
        _HELD[self._key] = _HELD.get(self._key, 0) + 1
        container = enclosing_container(folder)
        if container is not None and container[0] not in _HELD:
            run_dir, kind = container
            try:
                self._container = FolderLock(run_dir, f"{kind} folder", option, shared=True)
            except ArtifactError:
                self.release()
                raise ArtifactError(
                    f"{folder} is inside the {kind} folder {run_dir}, which another scircuits process "
                    f"(`scircuits {kind}`) is writing; wait for it to finish or write elsewhere"
                ) from None

    def release(self) -> None:
        if self._container is not None:
            self._container.release()
            self._container = None
        if self._key is not None:
            left = _HELD.get(self._key, 1) - 1
            if left > 0:
                _HELD[self._key] = left
            else:
                _HELD.pop(self._key, None)
            self._key = None
        if self._lock is not None:
            if self._made_lock_file and read_marker(self._folder) is None:
                (self._folder / LOCK_FILE).unlink(missing_ok=True)  # still held: no one else has it
                if self._made_folder:
                    with contextlib.suppress(OSError):
                        self._folder.rmdir()  # only when empty
            self._lock.release()
            self._lock = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def held_here(folder: Path) -> bool:
    """Whether this process holds a lock on ``folder`` (``run`` writing its own stages)."""
    return _key(Path(folder)) in _HELD


def read_lock(folder: Path, what: str) -> FolderLock | None:
    """A reader's lock on an artifact folder another command may be writing (refused while it does);
    None when this process holds the folder already or no process ever locked it."""
    folder = Path(folder)
    if _key(folder) in _HELD or not (folder / LOCK_FILE).exists():
        return None
    return FolderLock(folder, what, shared=True)


_GROUP_LOCKS: list[Flock] = []


def hold_for_group(folder: Path) -> None:
    """Called by each worker of a distributed writer: hold ``folder``'s group lock until this process
    ends, so that no new writer is let in while any worker lives (even if their parent died)."""
    lock = Flock.acquire(Path(folder) / GROUP_LOCK_FILE, shared=True)
    if lock is not None:
        _GROUP_LOCKS.append(lock)


def check_local(value: str | Path | None, option: str, command: str) -> None:
    """ArtifactError when ``value`` is a URL (s3://...) where ``command`` reads or writes only local
    folders: it would become a folder named ``s3:`` here (docs/scale.md lists what takes URLs)."""
    if value is not None and is_url(str(value)):
        raise ArtifactError(
            f"{option} {value}: {command} reads and writes local folders only; copy the folder here (or "
            'write locally and copy the result), see docs/scale.md, "Object storage"'
        )


def check_out_apart(
    out: str | Path, *, read: Sequence[Path] = (), holds: Sequence[Path] = (), option: str = "--out"
) -> Path:
    """``out`` made absolute, after refusing an empty ``out`` and one that is, or holds, a folder the
    command reads (``read``: also one inside such a folder; ``holds``: folders ``out`` may lie inside,
    such as a run directory, but not be or contain)."""
    if not str(out).strip():
        raise ArtifactError(f"{option} is empty: give the folder to write")
    where = _key(Path(out).expanduser())
    for path, inside_ok in [*((p, False) for p in read), *((p, True) for p in holds)]:
        other = _key(path)
        if where == other or where in other.parents:
            what = "is" if where == other else "holds"
            raise ArtifactError(
                f"{option} {out} {what} {other}, which this command reads; give a folder outside it"
            )
        if not inside_ok and other in where.parents:
            raise ArtifactError(
                f"{option} {out} is inside {other}, which this command reads; give a folder outside it"
            )
    return where


def local_paths(specs: Sequence[str | Path | None]) -> list[Path]:
    """The specs that name an existing local file or folder (URLs, hub ids and empty ones left out),
    for :func:`check_out_apart`'s ``read``."""
    found: list[Path] = []
    for spec in specs:
        if not spec or is_url(str(spec)):
            continue
        path = Path(str(spec)).expanduser()
        with contextlib.suppress(OSError):
            if path.exists():
                found.append(path)
    return found


def model_folder(plugins: object, model: str | None) -> str | None:
    """The local folder a model adapter loads its weights from (``--model hf:DIR``), if any."""
    if not model:
        return None
    try:
        return getattr(plugins.models.get(model), "hf_id", None)  # type: ignore[attr-defined]
    except Exception:  # an unknown model is refused, in its own words, where it is loaded
        return None


def publish_dir(staging: Path, final: Path) -> None:
    """Publish a folder of files written under ``staging`` as ``final`` with one rename.

    An existing ``final`` (an older state) is renamed away first and removed after; a kill between
    the two renames leaves the old state under ``.<name>.old-<pid>`` and no ``final``, which
    :func:`recover_published` puts back. Readers therefore see the old state or the new, whole.
    """
    for path in staging.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    if old.exists():
        shutil.rmtree(old)


def publish_into(staging: Path, folder: Path, last: str | None = None) -> None:
    """Move every entry of ``staging`` into ``folder`` (the folder keeps its marker and lock),
    replacing same-named entries: a file by one rename, a folder by two (the old one is renamed to a
    ``.tmp-PID`` name first, which :func:`remove_orphans` clears after a kill). ``last`` is moved in
    last (the file that says the folder is complete)."""
    for path in staging.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    for entry in sorted(staging.iterdir(), key=lambda p: (p.name == last, p.name)):
        dest = folder / entry.name
        if dest.is_dir() and not dest.is_symlink():
            old = folder / f".{entry.name}.replaced.tmp-{os.getpid()}"
            os.replace(dest, old)
            os.replace(entry, dest)
            shutil.rmtree(old)
        else:
            os.replace(entry, dest)
    staging.rmdir()


def recover_published(final: Path) -> None:
    """Undo a publish_dir killed between its renames: restore the old state if no new one exists."""
    olds = sorted(final.parent.glob(f".{final.name}.old-*"))
    for old in olds:
        if not final.exists():
            os.replace(old, final)
        else:
            shutil.rmtree(old, ignore_errors=True)


def remove_orphans(folder: Path, prefix: str = "") -> list[Path]:
    """Remove ``*.tmp-PID`` files and folders in ``folder`` whose process no longer runs (only those
    whose name starts with ``prefix``, in a folder the tool does not own)."""
    removed: list[Path] = []
    if not Path(folder).is_dir():
        return removed
    for path in Path(folder).iterdir():
        match = _TMP_PATTERN.search(path.name) if path.name.startswith(prefix) else None
        if match is None or int(match.group(1)) == os.getpid() or pid_alive(int(match.group(1))):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def write_probe(folder: Path) -> None:
    """Write, sync and remove a 4 KiB file in ``folder``: raises the OSError a real write would."""
    probe = tmp_name(folder / ".write-probe")
    with open(probe, "wb") as fh:
        fh.write(b"0" * 4096)
        fh.flush()
        os.fsync(fh.fileno())
    probe.unlink()


def check_writable(folder: Path, *, option: str = "--out") -> None:
    """Create ``folder`` if needed and prove a file can be written there, before any heavy work."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_probe(folder)
    except OSError as exc:
        raise ArtifactError(
            f"{folder}: cannot write here ({describe_os_error(exc)}); choose another {option}"
        ) from None


def check_can_create(path: Path, *, option: str = "--out") -> None:
    """Prove that ``path`` (a folder, existing or not) can be written, creating nothing: a file is
    written and removed in it, or in its nearest existing parent."""
    path = Path(path)
    try:
        if path.exists() and not path.is_dir():  # a name too long fails here (ENAMETOOLONG)
            return  # the command's own check names what is there
        probe_in = path
        while not probe_in.exists():
            if probe_in.parent == probe_in:
                break
            probe_in = probe_in.parent
        if not probe_in.is_dir():
            raise OSError(errno.ENOTDIR, "Not a directory", str(probe_in))
        write_probe(probe_in)
    except OSError as exc:
        raise ArtifactError(
            f"{path}: cannot write here ({describe_os_error(exc)}); choose another {option}"
        ) from None


# Errors of where things are written (not of the tool): each gets a one-line message, not a traceback.
DISK_ERRNOS = frozenset(
    {errno.EACCES, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG, errno.ENOTDIR, errno.EFBIG}
)


def describe_os_error(exc: OSError) -> str:
    reasons: dict[int, str] = {
        errno.EACCES: "permission denied",
        errno.EROFS: "read-only file system",
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
        errno.ENAMETOOLONG: "the path is too long",
        errno.ENOTDIR: "a part of the path is a file",
        errno.EFBIG: "the file is too large for the file system",
    }
    return reasons.get(exc.errno or -1, exc.strerror or str(exc))
