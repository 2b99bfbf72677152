"""Weights fingerprints: a model folder's bytes name the stages that read it, cheaply."""

from __future__ import annotations

import os

import pytest

from scircuits.platform.common import fingerprint
from scircuits.platform.common.fingerprint import weights_fingerprint
from scircuits.platform.config import AblateConfig, CollectConfig, RunConfig


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCIRCUITS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fingerprint, "_known", {})


def model_folder(path, weights: bytes):
    path.mkdir()
    (path / "config.json").write_text('{"model_type": "llama"}')
    (path / "model.safetensors").write_bytes(weights)
    return path


def test_other_weights_in_a_folder_are_another_model_and_a_moved_folder_the_same(tmp_path):
    a = model_folder(tmp_path / "a", b"\x01" * 1000)
    b = model_folder(tmp_path / "b", b"\x02" * 1000)
    same = model_folder(tmp_path / "c", b"\x01" * 1000)
    (same / ".scircuits-lock").write_text("not the model")  # hidden files are not the weights
    assert weights_fingerprint(a) == weights_fingerprint(same) != weights_fingerprint(b)
    for config_type, extra in ((CollectConfig, {}), (AblateConfig, {}), (RunConfig, {})):
        hashes = [config_type(model_path=str(p), **extra).config_hash() for p in (a, b, same)]
        assert hashes[0] == hashes[2] != hashes[1]
    assert CollectConfig(model_path=str(tmp_path / "gone")).identity()["model_path"] == "weights:missing"


def settle(folder):
    """Files as if written a minute ago (a file modified within seconds is hashed afresh each time)."""
    for path in folder.iterdir():
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns - 60 * 10**9))


def test_a_rewritten_file_is_hashed_again_and_an_unchanged_one_read_once(tmp_path, monkeypatch):
    folder = model_folder(tmp_path / "m", b"\x01" * 1000)
    settle(folder)
    first = weights_fingerprint(folder)
    reads: list[str] = []
    original = fingerprint.file_sha256
    monkeypatch.setattr(fingerprint, "file_sha256", lambda p: reads.append(str(p)) or original(p))
    monkeypatch.setattr(fingerprint, "_known", {})  # a new process: the stat cache on disk answers
    assert weights_fingerprint(folder) == first and reads == []
    (folder / "model.safetensors").write_bytes(b"\x03" * 1000)
    assert weights_fingerprint(folder) != first and len(reads) == 1
    reads.clear()
    weights_fingerprint(folder)
    assert len(reads) == 1, "a file written just now is hashed again: it may change within its mtime tick"


def test_a_hub_cache_link_is_named_by_its_blob_without_reading_it(tmp_path, monkeypatch):
    blobs = tmp_path / "models--org--m" / "blobs"
    blobs.mkdir(parents=True)
    name = "a" * 64
    (blobs / name).write_bytes(b"weights")
    snapshot = tmp_path / "models--org--m" / "snapshots" / ("b" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(blobs / name)
    monkeypatch.setattr(fingerprint, "file_sha256", lambda p: pytest.fail(f"read {p}"))
    assert fingerprint.content_hash(snapshot / "model.safetensors") == f"blob:{name}"
    assert len(weights_fingerprint(snapshot)) == 16


def test_a_model_named_by_its_folder_is_recorded_absolute_and_counted_by_its_weights(tmp_path, monkeypatch):
    model_folder(tmp_path / "m", b"\x01" * 1000)
    monkeypatch.chdir(tmp_path)
    relative = CollectConfig(model="hf:m")
    assert relative.model == f"hf:{tmp_path / 'm'}"  # found again from any folder (dashboard, circuit)
    before = relative.config_hash()
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x02" * 1000)  # new weights, same folder
    fingerprint._known.clear()
    assert CollectConfig(model=f"hf:{tmp_path / 'm'}").config_hash() != before
    moved = model_folder(tmp_path / "elsewhere", b"\x02" * 1000)
    assert CollectConfig(model=f"hf:{moved}").config_hash() == CollectConfig(model="hf:m").config_hash()
    assert CollectConfig(model="hf:org/name").model == "hf:org/name"  # a hub id is left as it is
