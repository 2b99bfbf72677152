"""The zarr calls outside its documented synchronous API (scircuits/store/zarr_internals.py), each on
a real store: a zarr upgrade that changes one of them fails here, by name, before the writer or the
integrity checks fail in a way that says less. pyproject.toml bounds zarr to the tested minor."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import zarr

from scircuits.store import zarr_internals


@pytest.fixture(params=["chunked", "sharded"])
def array(request, tmp_path):
    group = zarr.open_group(tmp_path / "store", mode="w")
    shards = (8, 4) if request.param == "sharded" else None
    return group.create_array("acts", shape=(16, 4), chunks=(4, 4), shards=shards, dtype="float32")


def test_run_executes_a_coroutine_on_zarrs_loop_and_returns_its_result():
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert zarr_internals.run(answer()) == 42


def test_rows_are_written_and_the_array_resized_through_the_async_layer(array):
    values = np.arange(16, dtype=np.float32).reshape(4, 4)
    zarr_internals.run(zarr_internals.set_rows(array, 4, 8, values))
    np.testing.assert_array_equal(array[4:8], values)
    zarr_internals.run(zarr_internals.resize_rows(array, 24))
    reopened = zarr.open_array(array.store_path.store, path=array.path, mode="r")
    assert reopened.shape == (24, 4)
    np.testing.assert_array_equal(reopened[4:8], values)


def test_replace_attributes_writes_all_attributes_of_a_group(tmp_path):
    group = zarr.open_group(tmp_path / "g", mode="w", attributes={"a": 1})
    zarr_internals.run(zarr_internals.replace_attributes(group, {"a": 2, "n_tokens": 7}))
    assert dict(zarr.open_group(tmp_path / "g", mode="r").attrs) == {"a": 2, "n_tokens": 7}


def test_grid_shape_object_keys_and_the_stored_keys_agree(array):
    grid = zarr_internals.grid_shape(array)
    assert grid == ((8, 4) if array.shards else (4, 4))
    assert zarr_internals.stored_keys(array) == {"acts/zarr.json"}  # no data object yet
    array[0:16] = np.ones((16, 4), dtype=np.float32)
    expected = {zarr_internals.object_key(array, (i, 0)) for i in range(16 // grid[0])}
    assert zarr_internals.stored_keys(array) == expected | {"acts/zarr.json"}
    assert all(key.startswith("acts/c/") for key in expected)
    for key in expected:  # each key names a file of the local store
        assert (array.store_path.store.root / key).is_file()


@pytest.mark.parametrize(("dtype", "width"), [("float16", 6), ("float32", 6), ("uint16", 6), ("int32", None)])
def test_a_raw_chunk_is_the_same_file_zarr_writes_and_reads_back(tmp_path, dtype, width):
    shape, chunks = ((0, width), (4, width)) if width else ((0,), (4,))
    values = (np.arange(4 * (width or 1)) * 3 - 5).astype(dtype).reshape(chunks)
    files = {}
    for how in ("zarr", "raw"):
        group = zarr.open_group(tmp_path / how, mode="w")
        array = group.create_array("x", shape=shape, chunks=chunks, dtype=dtype, compressors=None)
        zarr_internals.run(zarr_internals.resize_rows(array, 12))
        if how == "zarr":
            zarr_internals.run(zarr_internals.set_rows(array, 4, 8, values))
        else:
            write = zarr_internals.raw_chunk_writer(array)
            assert write is not None
            write(1, values)
        reopened = zarr.open_array(tmp_path / how, path="x", mode="r")
        np.testing.assert_array_equal(reopened[4:8], values)
        assert not reopened[:4].any() and not reopened[8:].any()
        files[how] = (
            tmp_path / how / zarr_internals.object_key(array, (1,) + (0,) * (len(shape) - 1))
        ).read_bytes()
    assert files["raw"] == files["zarr"]
    assert not list(tmp_path.rglob("*.partial"))


def test_a_raw_chunk_of_the_wrong_shape_or_dtype_is_refused_and_leaves_no_file(tmp_path):
    array = zarr.open_group(tmp_path / "s", mode="w").create_array(
        "x", shape=(8, 3), chunks=(4, 3), dtype="float32", compressors=None
    )
    write = zarr_internals.raw_chunk_writer(array)
    for wrong in (np.zeros((3, 3), np.float32), np.zeros((4, 3), np.float64)):
        with pytest.raises(ValueError, match="expected"):
            write(0, wrong)
    assert zarr_internals.stored_keys(array) == {"x/zarr.json"}


def test_no_raw_chunks_for_compressed_sharded_column_chunked_or_in_memory_arrays(tmp_path):
    group = zarr.open_group(tmp_path / "s", mode="w")
    compressed = group.create_array("z", shape=(8, 3), chunks=(4, 3), dtype="float32")  # zstd by default
    sharded = group.create_array(
        "s", shape=(8, 3), chunks=(4, 3), shards=(8, 3), dtype="float32", compressors=None
    )
    columns = group.create_array("c", shape=(8, 4), chunks=(4, 2), dtype="float32", compressors=None)
    memory = zarr.open_group(zarr.storage.MemoryStore(), mode="w").create_array(
        "m", shape=(8, 3), chunks=(4, 3), dtype="float32", compressors=None
    )
    for array in (compressed, sharded, columns, memory):
        assert zarr_internals.raw_chunk_writer(array) is None, array.path
