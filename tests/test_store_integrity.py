"""A damaged store is an error naming the file, never zeros or a reshape traceback."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from scircuits.cli.inspect import inspect
from scircuits.store import ActivationStore, NonFiniteActivationsError
from scircuits.store.errors import DamagedStoreError
from scircuits.store.synthetic import write_synthetic_store


@pytest.fixture
def store_path(tmp_path) -> str:
    return write_synthetic_store(tmp_path / "s.zarr", n_examples=12, d_model=6, chunk_rows=16)


def test_a_missing_chunk_file_is_named_when_the_store_opens(store_path):
    os.remove(os.path.join(store_path, "acts", "c", "1", "0"))
    with pytest.raises(DamagedStoreError, match=r"acts/c/1/0.*read them as zeros.*collect it again"):
        ActivationStore(store_path)


def test_a_missing_id_chunk_of_our_writer_is_named(store_path):
    os.remove(os.path.join(store_path, "positions", "c", "0"))
    with pytest.raises(DamagedStoreError, match=r"positions/c/0"):
        ActivationStore(store_path)


def test_a_truncated_chunk_is_named_when_it_is_read(store_path):
    chunk = os.path.join(store_path, "acts", "c", "2", "0")
    with open(chunk, "r+b") as f:
        f.truncate(10)
    store = ActivationStore(store_path)
    with pytest.raises(DamagedStoreError, match=r"acts/c/2/0 \(rows 32-47\) cannot be decoded"):
        store.read_rows(0, store.n_tokens)
    with pytest.raises(DamagedStoreError, match=r"acts/c/2/0"):
        list(store.iter_batches(8, split="all"))


def test_a_non_finite_row_is_refused_on_read_naming_row_and_example(store_path):
    store = ActivationStore(store_path)
    row = 20
    example = int(store.example_ids[row])
    zarr.open_group(store_path, mode="r+")["acts"][row, 3] = np.nan  # as a foreign tool might
    store = ActivationStore(store_path)
    with pytest.raises(NonFiniteActivationsError, match=rf"row {row} \(example {example}\)") as info:
        list(store.iter_batches(8, split="all"))
    assert info.value.example_index == example and info.value.n_nan == 1
    with pytest.raises(NonFiniteActivationsError):
        store.read_rows(16, 32)


def test_verify_counts_every_file_and_finds_damage(store_path):
    store = ActivationStore(store_path)
    report = store.verify()
    n_chunks = -(-store.n_tokens // 16)
    assert report["ok"] and report["checked_files"] == 4 * n_chunks
    with open(os.path.join(store_path, "token_ids", "c", "1"), "r+b") as f:
        f.truncate(3)
    report = ActivationStore(store_path).verify()
    assert not report["ok"] and report["damaged"] == ["token_ids/c/1"]
    assert ActivationStore(store_path).verify(fast=True)["ok"]  # fast: presence only


def test_inspect_verifies_every_chunk_and_exits_2_on_damage(store_path):
    ok = CliRunner().invoke(inspect, [store_path])
    assert ok.exit_code == 0 and "data files present and decodable" in ok.output
    with open(os.path.join(store_path, "acts", "c", "0", "0"), "r+b") as f:
        f.truncate(7)
    bad = CliRunner().invoke(inspect, [store_path, "--json"])
    assert bad.exit_code == 2
    data = json.loads(bad.output)
    assert data["integrity"]["damaged"] == ["acts/c/0/0"] and data["stats"] is None
    text = CliRunner().invoke(inspect, [store_path])
    assert text.exit_code == 2 and "DAMAGED" in text.output and "acts/c/0/0" in text.output
    fast = CliRunner().invoke(inspect, [store_path, "--fast"])  # the statistics still read the file
    assert fast.exit_code == 2 and "acts/c/0/0" in fast.output


def test_inspect_fast_checks_presence_only(store_path):
    result = CliRunner().invoke(inspect, [store_path, "--fast"])
    assert result.exit_code == 0 and "data files present" in result.output
    assert "decodable" not in result.output


def test_missing_file_through_the_cli_is_one_line(store_path):
    import subprocess
    import sys

    os.remove(os.path.join(store_path, "acts", "c", "0", "0"))
    result = subprocess.run(
        [sys.executable, "-m", "scircuits", "inspect", store_path], capture_output=True, text=True
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("Error: ") and "acts/c/0/0" in result.stderr
