"""The artifact-folder rule: never remove what the tool did not write, move superseded work aside,
one writer at a time, whole-or-nothing publication, orphans cleaned, writability checked first."""

from __future__ import annotations

import errno
import multiprocessing
import os
import subprocess
import sys

import pytest

from scircuits.platform.common import artifacts
from scircuits.platform.common.artifacts import (
    ArtifactError,
    FolderLock,
    claim,
    publish_dir,
    read_marker,
    recover_published,
    remove_orphans,
)


def test_claim_new_same_and_superseded(tmp_path):
    folder = tmp_path / "sae"
    assert claim(folder, "sae", "key-a").state == "new"
    (folder / "weights.bin").write_text("A")
    assert claim(folder, "sae", "key-a").state == "same"
    result = claim(folder, "sae", "key-b")
    assert result.state == "superseded"
    moved = tmp_path / result.moved_to.name
    assert (moved / "weights.bin").read_text() == "A"  # nothing deleted
    assert read_marker(folder).identity == "key-b" and not (folder / "weights.bin").exists()


def test_claim_refuses_user_files_and_other_kinds(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    with pytest.raises(ArtifactError, match=r"did not write \(notes.txt.*choose another --out"):
        claim(mine, "sae", "k")
    assert (mine / "notes.txt").read_text() == "precious"
    claim(tmp_path / "c", "causal", "k")
    (tmp_path / "c" / "results.json").write_text("{}")
    with pytest.raises(ArtifactError, match="holds a causal artifact, not a sae"):
        claim(tmp_path / "c", "sae", "k")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ArtifactError, match="is a file"):
        claim(tmp_path / "f", "sae", "k")


def test_an_empty_existing_folder_is_claimed(tmp_path):
    (tmp_path / "e").mkdir()
    assert claim(tmp_path / "e", "run", "k").state == "new"


def _hold_lock(folder, ready, release):
    lock = FolderLock(folder)
    ready.set()
    release.wait(10)
    lock.release()


def test_a_second_writer_is_refused(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(tmp_path, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(ArtifactError, match="another scircuits process is writing"):
            FolderLock(tmp_path, "SAE checkpoint")
    finally:
        release.set()
        holder.join(30)
    FolderLock(tmp_path).release()  # free again once the holder is gone


def test_publish_dir_replaces_whole_and_recovers_a_kill_between_renames(tmp_path):
    final = tmp_path / "state"
    staging = tmp_path / ".state.tmp-1"
    staging.mkdir()
    (staging / "a").write_text("1")
    (staging / "b").write_text("1")
    publish_dir(staging, final)
    assert sorted(p.name for p in final.iterdir()) == ["a", "b"]
    # a kill after the first rename of a second publish: the old state sits aside, no final
    os.replace(final, tmp_path / ".state.old-999")
    assert not final.exists()
    recover_published(final)
    assert (final / "a").read_text() == "1" and not (tmp_path / ".state.old-999").exists()


def test_orphaned_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(dead.stdout)
    orphan = tmp_path / f".results.json.tmp-{dead_pid}"
    orphan.write_text("half")
    live = tmp_path / f".results.json.tmp-{os.getpid()}"
    live.write_text("mine")
    (tmp_path / f".state.tmp-{dead_pid}").mkdir()
    removed = remove_orphans(tmp_path)
    assert sorted(p.name for p in removed) == sorted([orphan.name, f".state.tmp-{dead_pid}"])
    assert live.exists()


def test_unwritable_outputs_fail_before_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match=r"a part of the path is a file.*choose another --out"):
        artifacts.check_writable(tmp_path / "file" / "sub")
    with pytest.raises(ArtifactError, match="the path is too long"):
        artifacts.check_writable(tmp_path / ("x" * 300))


def test_a_full_disk_is_reported_with_its_reason(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(artifacts.os, "fsync", full)
    with pytest.raises(ArtifactError, match=r"no space left on the device\); choose another --sae-out"):
        artifacts.check_writable(tmp_path / "out", option="--sae-out")


def test_a_lock_on_a_folder_that_never_became_an_artifact_leaves_nothing_behind(tmp_path):
    """A command refused after taking its lock (a folder of the user's, a new folder) leaves no lock
    file there and no empty folder; a claimed folder keeps its lock file."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError), FolderLock(theirs):
        claim(theirs, "synth model", "x")
    assert sorted(p.name for p in theirs.iterdir()) == ["notes.txt"]
    new = tmp_path / "new" / "deeper"
    with FolderLock(new):
        assert (new / artifacts.LOCK_FILE).exists()
    assert not new.exists()
    claimed = tmp_path / "claimed"
    with FolderLock(claimed):
        claim(claimed, "synth model", "x")
    assert (claimed / artifacts.LOCK_FILE).exists()
    with FolderLock(claimed):  # a lock file it found is left as it was
        pass
    assert (claimed / artifacts.LOCK_FILE).exists()
