"""The activation store, format v1: attributes, round trip, resume, refusals, foreign stores."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import zarr

from scircuits.platform.contract.errors import ConfigError, DataFormatError, ScircuitsError
from scircuits.store import (
    ActivationStore,
    ActivationStoreWriter,
    NonFiniteActivationsError,
    NotAStoreError,
    StoreCompleteError,
    StoreLockedError,
    StoreMismatchError,
)
from scircuits.store.format import REQUIRED_ATTRS
from scircuits.store.synthetic import synthetic_attrs, synthetic_example, write_synthetic_store

D = 12


def traced_attrs(**changes):
    attrs = {
        "model": "smollm2-135m",
        "model_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "model_revision": "abc123",
        "layer": 15,
        "site": "resid",
        "benchmark": "arithmetic",
        "split": "test",
        "source": "traced",
        "config_hash": "h1",
        "config": {"limit": 10, "seed": 0},
    }
    attrs.update(changes)
    return attrs


def expected_rows(n_examples, d_model=D, seed=0):
    tokens, acts, examples, positions = [], [], [], []
    for i in range(n_examples):
        t, a = synthetic_example(i, d_model, seed=seed)
        (
            tokens.append(t),
            acts.append(a),
            examples.append(np.full(len(t), i)),
            positions.append(np.arange(len(t))),
        )
    return [np.concatenate(x) for x in (tokens, acts, examples, positions)]


def test_error_classes_are_user_errors():
    assert issubclass(StoreMismatchError, ScircuitsError)
    assert issubclass(NonFiniteActivationsError, ScircuitsError)
    assert issubclass(NotAStoreError, DataFormatError)


def test_format_attributes_and_dtypes(tmp_path):
    path = write_synthetic_store(tmp_path / "s.zarr", n_examples=9, d_model=D, chunk_rows=16)
    group = zarr.open_group(path, mode="r")
    attrs = dict(group.attrs)
    assert set(REQUIRED_ATTRS) <= attrs.keys()
    assert attrs["format"] == "scircuits.activations" and attrs["format_version"] == 2
    assert attrs["source"] == "synthetic" and attrs["complete"] is True
    assert attrs["dtype"] == "float16" and attrs["d_model"] == D
    tokens, _, _, _ = expected_rows(9)
    assert attrs["n_tokens"] == len(tokens) and attrs["n_examples"] == 9
    assert group.metadata.zarr_format == 3
    assert group["acts"].dtype == np.float16 and group["acts"].shape == (len(tokens), D)
    assert group["acts"].chunks == (16, D)
    for name in ("token_ids", "example_ids", "positions"):
        assert group[name].dtype == np.int32 and group[name].shape == (len(tokens),)


def test_round_trip_float32(tmp_path):
    path = write_synthetic_store(tmp_path / "s.zarr", n_examples=11, d_model=D, chunk_rows=8, dtype="float32")
    store = ActivationStore(path)
    tokens, acts, examples, positions = expected_rows(11)
    assert store.n_tokens == len(tokens) and store.n_examples == 11 and store.d_model == D
    assert store.complete and store.source == "synthetic" and store.dtype == "float32"
    np.testing.assert_array_equal(store.read_rows(0, store.n_tokens), acts)
    np.testing.assert_array_equal(store.read_rows(5, 20), acts[5:20])
    np.testing.assert_array_equal(store.token_ids, tokens)
    np.testing.assert_array_equal(store.example_ids, examples)
    np.testing.assert_array_equal(store.positions, positions)
    with pytest.raises(IndexError):
        store.read_rows(0, store.n_tokens + 1)


def test_float16_rounding_and_compressed_round_trip(tmp_path):
    path = write_synthetic_store(
        tmp_path / "s.zarr", n_examples=7, d_model=D, chunk_rows=8, compressor="zstd"
    )
    store = ActivationStore(path)
    _, acts, _, _ = expected_rows(7)
    np.testing.assert_array_equal(
        store.read_rows(0, store.n_tokens), acts.astype(np.float16).astype(np.float32)
    )
    assert store.compressors == ["ZstdCodec"]


def test_examples_longer_than_a_chunk_and_torch_input(tmp_path):
    torch = pytest.importorskip("torch")
    acts = torch.randn(37, D, dtype=torch.bfloat16)
    with ActivationStoreWriter.open(
        tmp_path / "s.zarr", synthetic_attrs(), d_model=D, chunk_rows=8, dtype="float32"
    ) as writer:
        writer.append_example(0, torch.arange(37), acts)
        writer.append_example(1, np.arange(3), np.ones((3, D)))
    store = ActivationStore(tmp_path / "s.zarr")
    np.testing.assert_array_equal(store.read_rows(0, 37), acts.float().numpy())
    np.testing.assert_array_equal(store.positions, np.r_[np.arange(37), np.arange(3)])
    assert store.n_tokens == 40 and store.n_examples == 2


def test_resume_in_process_and_reopen_complete(tmp_path):
    path = tmp_path / "s.zarr"
    writer = ActivationStoreWriter.open(path, synthetic_attrs(), d_model=D, chunk_rows=8)
    for i in range(5):
        writer.append_example(i, *synthetic_example(i, D))
    writer.close(complete=False)
    assert not ActivationStore(path).complete
    writer = ActivationStoreWriter.open(path, synthetic_attrs(), d_model=D, chunk_rows=8)
    assert writer.n_examples_written == 5 and not writer.complete
    assert writer.n_tokens_written == len(expected_rows(5)[0])
    for i in range(writer.n_examples_written, 10):
        writer.append_example(i, *synthetic_example(i, D))
    writer.close()
    reference = write_synthetic_store(tmp_path / "ref.zarr", n_examples=10, d_model=D, chunk_rows=8)
    resumed, uninterrupted = ActivationStore(path), ActivationStore(reference)
    np.testing.assert_array_equal(
        resumed.read_rows(0, resumed.n_tokens), uninterrupted.read_rows(0, uninterrupted.n_tokens)
    )
    np.testing.assert_array_equal(resumed.example_ids, uninterrupted.example_ids)

    again = ActivationStoreWriter.open(path, synthetic_attrs(), d_model=D, chunk_rows=8)
    assert again.complete and again.n_examples_written == 10
    with pytest.raises(StoreCompleteError, match=r"already complete"):
        again.append_example(10, *synthetic_example(10, D))
    again.close()
    assert ActivationStore(path).n_examples == 10


def test_flush_records_progress(tmp_path):
    path = tmp_path / "s.zarr"
    writer = ActivationStoreWriter.open(path, synthetic_attrs(), d_model=D, chunk_rows=64)
    writer.append_example(0, *synthetic_example(0, D))
    assert zarr.open_group(path, mode="r").attrs["n_examples"] == 0  # still buffered
    writer.flush()
    assert zarr.open_group(path, mode="r").attrs["n_examples"] == 1
    writer.close()


def test_mismatch_is_refused_with_the_differences_named(tmp_path):
    path = tmp_path / "s.zarr"
    with ActivationStoreWriter.open(path, traced_attrs(), d_model=D) as writer:
        writer.append_example(0, np.arange(4), np.zeros((4, D)))
    with pytest.raises(StoreMismatchError) as info:
        ActivationStoreWriter.open(path, traced_attrs(layer=3, config_hash="h2"), d_model=D)
    message = str(info.value)
    assert "layer: stored 15, now 3" in message and "config_hash: stored 'h1', now 'h2'" in message
    assert "--out" in message and "delete" in message
    with pytest.raises(StoreMismatchError, match=r"d_model: stored 12, now 16"):
        ActivationStoreWriter.open(path, traced_attrs(), d_model=16)
    with pytest.raises(StoreMismatchError, match=r"dtype: stored 'float16', now 'float32'"):
        ActivationStoreWriter.open(path, traced_attrs(), d_model=D, dtype="float32")
    # the refused openings changed nothing, and left no lock behind
    assert ActivationStoreWriter.open(path, traced_attrs(), d_model=D).complete


def test_nan_and_overflow_refused_and_nothing_stored(tmp_path):
    path = tmp_path / "s.zarr"
    writer = ActivationStoreWriter.open(path, synthetic_attrs(), d_model=D, chunk_rows=8)
    writer.append_example(0, np.arange(3), np.ones((3, D)))
    bad = np.ones((5, D), dtype=np.float32)
    bad[1, 2], bad[3, 4], bad[4, 0] = np.nan, np.inf, np.nan
    with pytest.raises(NonFiniteActivationsError, match=r"example 7: activations hold 2 NaN, 1 inf") as info:
        writer.append_example(7, np.arange(5), bad)
    assert (info.value.example_index, info.value.n_nan, info.value.n_inf) == (7, 2, 1)
    huge = np.ones((2, D), dtype=np.float32)
    huge[0, 0] = 1e6
    with pytest.raises(NonFiniteActivationsError, match=r"too large for float16"):
        writer.append_example(8, np.arange(2), huge)
    writer.append_example(9, np.arange(2), np.full((2, D), 2.0))
    writer.close()
    store = ActivationStore(path)
    assert store.n_examples == 2 and store.n_tokens == 5
    np.testing.assert_array_equal(store.example_ids, [0, 0, 0, 9, 9])


def test_bad_inputs_are_explained(tmp_path):
    with pytest.raises(ConfigError, match=r"model, model_id, model_revision"):
        ActivationStoreWriter.open(
            tmp_path / "a.zarr",
            {"source": "traced", "layer": 1, "site": "resid", "benchmark": "b", "split": "test"},
            d_model=D,
        )
    with pytest.raises(ConfigError, match=r"source"):
        ActivationStoreWriter.open(tmp_path / "b.zarr", {"source": "made-up"}, d_model=D)
    with pytest.raises(ConfigError, match=r"set by the writer"):
        ActivationStoreWriter.open(tmp_path / "c.zarr", synthetic_attrs(n_tokens=3), d_model=D)
    with pytest.raises(ConfigError, match=r"float16, float32"):
        ActivationStoreWriter.open(tmp_path / "d.zarr", synthetic_attrs(), d_model=D, dtype="int8")
    with (
        ActivationStoreWriter.open(tmp_path / "e.zarr", synthetic_attrs(), d_model=D) as writer,
        pytest.raises(ScircuitsError, match=r"shape \(4, 5\), expected \(4, 12\)"),
    ):
        writer.append_example(0, np.arange(4), np.zeros((4, 5)))
    (tmp_path / "f" / "sub").mkdir(parents=True)
    (tmp_path / "f" / "notes.txt").write_text("x")
    (tmp_path / "f" / "sub" / "draft.partial").write_text("keep me")
    with pytest.raises(NotAStoreError, match=r"not an activation store"):
        ActivationStoreWriter.open(tmp_path / "f", synthetic_attrs(), d_model=D)
    assert (tmp_path / "f" / "sub" / "draft.partial").exists()  # nothing of a foreign folder is touched


def test_second_writer_is_locked_out(tmp_path):
    path = tmp_path / "s.zarr"
    first = ActivationStoreWriter.open(path, synthetic_attrs(), d_model=D)
    with pytest.raises(StoreLockedError, match=r"another process"):
        ActivationStoreWriter.open(path, synthetic_attrs(), d_model=D)
    first.close()
    ActivationStoreWriter.open(path, synthetic_attrs(), d_model=D).close()


def test_reader_errors(tmp_path):
    with pytest.raises(NotAStoreError, match=r"does not exist"):
        ActivationStore(tmp_path / "missing.zarr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAStoreError, match=r"not an activation store"):
        ActivationStore(tmp_path / "empty")
    zarr.open_group(tmp_path / "other.zarr", mode="w", attributes={"format": "something-else"})
    with pytest.raises(NotAStoreError, match=r"'format' attribute is 'something-else'"):
        ActivationStore(tmp_path / "other.zarr")
    path = write_synthetic_store(tmp_path / "s.zarr", n_examples=3, d_model=D)
    group = zarr.open_group(path, mode="r+")
    group.attrs["format_version"] = 3
    with pytest.raises(NotAStoreError, match=r"format_version 3 is not supported.*upgrade scircuits"):
        ActivationStore(path)


def _foreign_store(path, n_tokens, d_model, *, chunks, shards=None, version=1):
    """A format-v1 store written with plain zarr, as another tool would (odd chunking, sharded)."""
    rng = np.random.default_rng(3)
    acts = rng.standard_normal((n_tokens, d_model)).astype(np.float32)
    example_ids = np.repeat(np.arange(n_tokens // 5 + 1), 5)[:n_tokens].astype(np.int32)
    attrs = {
        "format": "scircuits.activations",
        "format_version": version,
        "model": "gpt2",
        "model_id": "gpt2",
        "model_revision": "r",
        "layer": 3,
        "site": "resid",
        "benchmark": "x",
        "split": "test",
        "d_model": d_model,
        "dtype": "float32",
        "n_tokens": n_tokens,
        "n_examples": int(example_ids[-1]) + 1,
        "source": "imported",
        "complete": True,
        "created": "2026-01-01T00:00:00+00:00",
        "scircuits_version": "other-tool",
    }
    group = zarr.open_group(path, mode="w", attributes=attrs)
    group.create_array("acts", shape=acts.shape, chunks=chunks, shards=shards, dtype="float32")[:] = acts
    group.create_array("token_ids", shape=(n_tokens,), chunks=(7,), dtype="int32")[:] = np.arange(n_tokens)
    group.create_array("example_ids", shape=(n_tokens,), chunks=(7,), dtype="int32")[:] = example_ids
    group.create_array("positions", shape=(n_tokens,), chunks=(7,), dtype="int32")[:] = (
        np.arange(n_tokens) % 5
    )
    return acts


@pytest.mark.parametrize("chunks,shards", [((10, 3), None), ((5, 6), (20, 6))])
def test_reads_a_store_written_by_another_tool(tmp_path, chunks, shards):
    acts = _foreign_store(tmp_path / "f.zarr", 53, 6, chunks=chunks, shards=shards)
    store = ActivationStore(tmp_path / "f.zarr")
    assert store.source == "imported" and store.n_tokens == 53
    # a version-1 store is read as version 2: its benchmark and split make the data_source record
    assert store.attrs["format_version"] == 1
    assert store.attrs["data_source"] == {"kind": "benchmark", "benchmark": "x", "split": "test"}
    assert store.block_rows == (shards or chunks)[0]
    np.testing.assert_array_equal(store.read_rows(0, 53), acts)
    rows = np.concatenate([b.numpy() for b in store.iter_batches(8, split="all", shuffle_buffer_rows=16)])
    np.testing.assert_array_equal(np.sort(rows, axis=0), np.sort(acts, axis=0))
    stats = store.stats()
    np.testing.assert_allclose(stats["mean"], acts.astype(np.float64).mean(axis=0), rtol=1e-9)


def test_stats_match_numpy_and_count_nonfinite(tmp_path):
    acts = _foreign_store(tmp_path / "f.zarr", 40, 4, chunks=(6, 4))
    group = zarr.open_group(tmp_path / "f.zarr", mode="r+")
    acts[3, 1] = np.nan
    acts[10, 1] = np.inf
    group["acts"][:] = acts
    stats = ActivationStore(tmp_path / "f.zarr").stats()
    assert stats["nonfinite"].tolist() == [0, 2, 0, 0] and stats["nonfinite_total"] == 2
    finite = np.where(np.isfinite(acts), acts, np.nan)
    np.testing.assert_allclose(stats["mean"], np.nanmean(finite, axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats["std"], np.nanstd(finite, axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats["min"], np.nanmin(finite, axis=0))
    np.testing.assert_allclose(stats["abs_max"], np.nanmax(np.abs(finite), axis=0))
    good_rows = np.isfinite(acts).all(axis=1)
    norms = np.linalg.norm(acts[good_rows].astype(np.float64), axis=1)
    assert stats["norm"]["mean"] == pytest.approx(norms.mean())
    assert stats["norm"]["max"] == pytest.approx(norms.max())
    assert stats["norm"]["std"] == pytest.approx(norms.std())


def test_stats_on_a_sample_reads_whole_blocks(tmp_path):
    path = write_synthetic_store(tmp_path / "s.zarr", n_examples=30, d_model=D, chunk_rows=16)
    stats = ActivationStore(path).stats(max_rows=40)
    assert stats["rows"] == 48 and stats["rows_total"] > 48
    assert json.dumps({k: v for k, v in stats.items() if not hasattr(v, "shape")})


def test_fsspec_url_write_resume_and_read():
    """A store on any fsspec URL (here the in-memory filesystem) is written, resumed and read the same way."""
    url = "memory://scircuits-test/resume.zarr"
    writer = ActivationStoreWriter.open(url, synthetic_attrs(), d_model=D, chunk_rows=16)
    for i in range(6):
        writer.append_example(i, *synthetic_example(i, D))
    writer.close(complete=False)
    writer = ActivationStoreWriter.open(url, synthetic_attrs(), d_model=D, chunk_rows=16)
    assert writer.n_examples_written == 6
    for i in range(6, 12):
        writer.append_example(i, *synthetic_example(i, D))
    writer.close()
    store = ActivationStore(url)
    _, acts, examples, _ = expected_rows(12)
    assert store.complete and store.size_on_disk() > 0
    np.testing.assert_array_equal(
        store.read_rows(0, store.n_tokens), acts.astype(np.float16).astype(np.float32)
    )
    np.testing.assert_array_equal(store.example_ids, examples)
    with pytest.raises(StoreMismatchError, match=r"seed: stored 0, now 1"):
        ActivationStoreWriter.open(url, synthetic_attrs(seed=1), d_model=D)


def test_writer_memory_is_one_chunk_not_the_store(tmp_path):
    d_model, chunk_rows = 64, 128
    writer = ActivationStoreWriter.open(
        tmp_path / "s.zarr", synthetic_attrs(), d_model=d_model, chunk_rows=chunk_rows
    )
    examples = [synthetic_example(i, d_model, max_tokens=64) for i in range(8)]
    writer.append_example(0, *examples[0])
    writer.flush()  # zarr's lazy imports and thread pools start here, outside the measurement
    tracemalloc.start()
    try:
        total = examples[0][0].shape[0]
        for i in range(1, 400):
            token_ids, acts = examples[i % 8]
            writer.append_example(i, token_ids, acts)
            total += acts.shape[0]
        _, peak = tracemalloc.get_traced_memory()  # (closing trims the arrays: a cost per chunk, not per row)
    finally:
        tracemalloc.stop()
    writer.close()
    assert ActivationStore(tmp_path / "s.zarr").n_tokens == total
    stored_bytes = total * d_model * 2
    assert stored_bytes > 20 * chunk_rows * d_model * 2
    assert peak < 4 * chunk_rows * d_model * 4 + (256 << 10) < stored_bytes / 4, (peak, stored_bytes)


def test_an_unfinished_version_1_store_is_read_but_not_appended_to(tmp_path):
    path = tmp_path / "old.zarr"
    attrs = {
        "source": "traced",
        "model": "m",
        "model_id": "m",
        "model_revision": "r",
        "layer": 1,
        "site": "resid",
        "benchmark": "b",
        "split": "test",
    }
    writer = ActivationStoreWriter.open(path, attrs, d_model=D, chunk_rows=8)
    writer.append_example(0, np.arange(8), np.ones((8, D), dtype=np.float32))
    writer.close(complete=False)
    group = zarr.open_group(path, mode="r+")
    group.attrs["format_version"] = 1
    del group.attrs["data_source"]
    assert ActivationStore(path).attrs["data_source"]["benchmark"] == "b"
    with pytest.raises(
        NotAStoreError, match=r"format_version 1 was written by an older scircuits.*not appended"
    ):
        ActivationStoreWriter.open(path, attrs, d_model=D, chunk_rows=8)


@pytest.mark.parametrize("dtype", ["float16", "float32", "bfloat16"])
def test_chunks_written_as_files_are_the_files_zarr_writes(tmp_path, monkeypatch, dtype):
    """An uncompressed local store skips zarr's codec pipeline (zarr_internals.raw_chunk_writer): the
    store it leaves is the store zarr's own writes leave, file for file and byte for byte."""
    from scircuits.store import zarr_internals

    def write(path):
        with ActivationStoreWriter.open(path, synthetic_attrs(), d_model=D, chunk_rows=8, dtype=dtype) as w:
            for i in range(9):
                w.append_example(i, *synthetic_example(i, D, max_tokens=12))
                if i == 4:
                    w.flush()  # a partial chunk, padded, then rewritten whole

    with monkeypatch.context() as patched:  # the raw run never writes a chunk through zarr
        patched.setattr(zarr_internals, "set_rows", lambda *a: pytest.fail("a chunk went through zarr"))
        write(tmp_path / "raw.zarr")
    calls = []
    real = zarr_internals.raw_chunk_writer
    monkeypatch.setattr(zarr_internals, "raw_chunk_writer", lambda a: calls.append(real(a)))
    write(tmp_path / "zarr.zarr")
    assert len(calls) == 4 and all(calls)  # the same arrays would have had raw writers: none used

    def files(root):
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "zarr.json" and not p.name.startswith(".")
        }

    raw, through_zarr = files(tmp_path / "raw.zarr"), files(tmp_path / "zarr.zarr")
    assert len(raw) > 4 and raw == through_zarr
    np.testing.assert_array_equal(
        ActivationStore(tmp_path / "raw.zarr").read_rows(0, 40),
        ActivationStore(tmp_path / "zarr.zarr").read_rows(0, 40),
    )


def test_arrays_chunked_otherwise_are_written_through_zarr(tmp_path):
    """A store whose id arrays are chunked unlike its acts (another tool's) is not written raw."""
    path = tmp_path / "s.zarr"
    with ActivationStoreWriter.open(path, synthetic_attrs(), d_model=D, chunk_rows=8) as writer:
        writer.append_example(0, *synthetic_example(0, D, max_tokens=12))
        writer.close(complete=False)
    group = zarr.open_group(path, mode="r+")
    positions = group["positions"][:]
    del group["positions"]
    group.create_array("positions", shape=positions.shape, chunks=(4,), dtype="int32", compressors=None)
    group["positions"][:] = positions
    with ActivationStoreWriter.open(path, synthetic_attrs(), d_model=D, chunk_rows=8) as writer:
        assert writer._raw_writers is None
        for i in range(1, 5):
            writer.append_example(i, *synthetic_example(i, D, max_tokens=12))
    store = ActivationStore(path)
    expected = np.concatenate([np.arange(len(synthetic_example(i, D, max_tokens=12)[0])) for i in range(5)])
    np.testing.assert_array_equal(store.positions, expected)


def test_a_server_lost_before_the_lock_is_released_does_not_hide_the_commands_error(capsys):
    import scircuits.platform.common.logs  # noqa: F401 - the CLI's handler of scircuits' loggers
    from scircuits.store.remote import RemoteLock

    pytest.importorskip("botocore")

    lock = RemoteLock("memory://scircuits-test/lost-server", "store")

    def gone(*args, **kwargs):  # what s3fs lets through when the server is down
        from botocore.exceptions import EndpointConnectionError

        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")

    lock._fs.cat_file = gone
    with pytest.raises(ValueError, match="the command's own error"), lock:
        raise ValueError("the command's own error")
    assert "could not delete the lock object memory://scircuits-test/lost-server/.scircuits-lock" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "text",
    ["[1, 2]", '"str"', "null", "3", '{"zarr_format": 3, "node_type": "group", "attributes": [1]}'],
)
def test_a_zarr_json_that_is_not_an_object_is_a_one_line_data_format_error(tmp_path, text):
    from scircuits.platform.train.training import open_store

    path = tmp_path / "s.zarr"
    write_synthetic_store(path, n_examples=3, d_model=D)
    (path / "zarr.json").write_text(text + "\n")
    for opener in (ActivationStore, open_store):
        with pytest.raises(DataFormatError) as info:
            opener(str(path))
        message = str(info.value)
        assert "zarr.json" in message and "\n" not in message
