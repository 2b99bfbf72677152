"""`scircuits inspect`: text and JSON views of a store, and a clear error for anything else."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from scircuits.cli import main
from scircuits.cli.inspect import inspect
from scircuits.store import ActivationStore, ActivationStoreWriter
from scircuits.store.synthetic import synthetic_attrs, write_synthetic_store


@pytest.fixture
def store_path(tmp_path) -> str:
    return write_synthetic_store(tmp_path / "s.zarr", n_examples=12, d_model=6, chunk_rows=16)


def test_text_view(store_path):
    result = CliRunner().invoke(inspect, [store_path])
    assert result.exit_code == 0, result.output
    store = ActivationStore(store_path)
    out = result.output
    assert f"{store_path}: complete" in out
    assert f"{store.n_tokens:,} tokens x 6 (float16), 12 examples, chunks of 16 rows" in out
    assert "on disk" in out and "uncompressed" in out
    assert "source             'synthetic'" in out and "format_version     2" in out
    assert f"statistics over {store.n_tokens:,} of {store.n_tokens:,} rows" in out
    assert "largest |value| dims" in out and "token L2 norm" in out
    assert "no non-finite values" in out


def test_json_view(store_path):
    result = CliRunner().invoke(inspect, [store_path, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    store = ActivationStore(store_path)
    assert data["attrs"]["format"] == "scircuits.activations" and data["complete"] is True
    assert data["shape"] == [store.n_tokens, 6] and data["size_on_disk"] > 0
    stats = data["stats"]
    assert stats["rows"] == store.n_tokens and len(stats["mean"]) == 6 and stats["nonfinite_total"] == 0
    rows = store.read_rows(0, store.n_tokens).astype(np.float64)
    np.testing.assert_allclose(stats["mean"], rows.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(stats["abs_max"], np.abs(rows).max(axis=0))


def test_incomplete_store_and_nonfinite_values_are_flagged(tmp_path):
    path = tmp_path / "s.zarr"
    writer = ActivationStoreWriter.open(path, synthetic_attrs(), d_model=4, dtype="float32", chunk_rows=8)
    writer.append_example(0, np.arange(5), np.ones((5, 4)))
    writer.close(complete=False)
    group = zarr.open_group(path, mode="r+")  # as a foreign tool might have stored it
    group["acts"][2, 1] = np.nan
    out = CliRunner().invoke(inspect, [str(path)]).output
    assert "INCOMPLETE" in out and "re-run it to resume" in out
    assert "WARNING: 1 non-finite values (NaN/inf) in 1 dimension(s)" in out
    data = json.loads(CliRunner().invoke(inspect, [str(path), "--json"]).output)
    assert data["stats"]["nonfinite"] == [0, 1, 0, 0] and data["complete"] is False


def test_not_a_store_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", str(tmp_path / "plain")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "is not an activation store" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["inspect", str(tmp_path / "missing.zarr")])
    assert "does not exist" in capsys.readouterr().err
