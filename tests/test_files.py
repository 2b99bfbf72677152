"""scircuits.files: the one atomic write every layer uses."""

from __future__ import annotations

import errno
import os

import pytest

from scircuits import files
from scircuits.files import Flock, atomic_path, tmp_name, write_atomic


def test_text_bytes_and_a_writer_function_land_whole(tmp_path):
    write_atomic(tmp_path / "a.txt", "héllo\n")
    write_atomic(tmp_path / "b.bin", b"\x00\x01")
    write_atomic(tmp_path / "c.bin", lambda fh: fh.write(b"from a writer"))
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c.bin").read_bytes() == b"from a writer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.bin"]


def test_the_file_and_its_folder_are_synced_before_and_after_the_rename(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    write_atomic(tmp_path / "x.json", "{}")
    assert events == ["fsync-file", "replace", "fsync-dir"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    path.write_text("old")

    def broken(fh):
        fh.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomic(path, broken)
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)  # the data cannot be made durable: no rename
    with pytest.raises(OSError, match="No space"):
        write_atomic(path, "new")
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]


def test_atomic_path_gives_a_path_for_writers_that_take_one(tmp_path):
    target = tmp_path / "w.safetensors"
    with atomic_path(target) as tmp:
        assert tmp == tmp_name(target) and tmp.parent == tmp_path
        assert tmp.name.startswith(".w.safetensors.tmp-")
        tmp.write_bytes(b"weights")
        assert not target.exists()
    assert target.read_bytes() == b"weights" and not tmp.exists()


def test_flock_shared_and_exclusive_modes(tmp_path):
    # flock locks belong to an open file description, so two acquisitions in one process contend
    path = tmp_path / ".scircuits-lock"
    writer = Flock.acquire(path)
    assert writer is not None and path.is_file()
    assert Flock.acquire(path) is None and Flock.acquire(path, shared=True) is None
    assert Flock.is_held(path)
    writer.release()
    assert not Flock.is_held(path)
    readers = [Flock.acquire(path, shared=True) for _ in range(2)]
    assert all(r is not None for r in readers)
    assert Flock.acquire(path) is None  # no writer while readers hold it
    for r in readers:
        r.release()
    assert Flock.acquire(path) is not None


def test_flock_on_a_folder_and_on_a_read_only_lock_file(tmp_path, monkeypatch):
    folder = tmp_path / "store"
    folder.mkdir()
    held = Flock.acquire(folder)
    assert held is not None and Flock.acquire(folder) is None
    held.release()
    path = tmp_path / ".lock"
    path.touch()
    real_open = os.open

    def read_only(p, flags, *args):
        if flags & (os.O_RDWR | os.O_WRONLY | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(p))
        return real_open(p, flags, *args)

    monkeypatch.setattr(files.os, "open", read_only)
    reader = Flock.acquire(path, shared=True)  # flock needs no write access
    assert reader is not None
    with pytest.raises(OSError, match="Read-only"):
        Flock.acquire(path)  # a writer needs it
    reader.release()
