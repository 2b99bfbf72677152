"""scircuits.files: the one atomic write every layer uses."""

from __future__ import annotations

import errno
import os

import pytest

from scircuits import files
from scircuits.files import atomic_path, tmp_name, write_atomic


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
