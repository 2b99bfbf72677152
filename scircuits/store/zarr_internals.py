"""Every use of zarr beyond its synchronous, documented API, in one place.

The writer runs its chunk writes, resizes and progress update together in one trip to zarr's own
event loop (zarr objects are bound to that loop, so ``asyncio.run`` cannot run them), and the
integrity checks list a store's files and name them. zarr exposes no public call for either: these
go through ``zarr.core.sync`` and array metadata, which a zarr release may change.

An uncompressed local array stores each chunk as its C-order little-endian bytes (the zarr v3
``bytes`` codec and nothing else). The writer writes such chunks itself (:func:`raw_chunk_writer`),
the way zarr's local store does (a temporary ``.partial`` file renamed over the chunk), which skips
zarr's codec pipeline and event loop: a chunk's bytes go once from the buffer to the file, and the
writer's background thread holds the GIL for microseconds instead of milliseconds. pyproject.toml
bounds zarr below the next minor for that reason, and tests/test_zarr_internals.py exercises each
function here on a real store, so an upgrade that breaks one fails there first, by name.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from zarr.codecs import BytesCodec
from zarr.core.sync import sync as _sync
from zarr.storage import LocalStore

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on zarr's event loop and return its result (blocking)."""
    return _sync(coroutine)


def set_rows(array: Any, start: int, stop: int, values: np.ndarray) -> Coroutine[Any, Any, None]:
    """A coroutine writing rows [start, stop) of ``array``."""
    return array.async_array.setitem(slice(start, stop), values)


def resize_rows(array: Any, rows: int) -> Coroutine[Any, Any, Any]:
    """A coroutine resizing ``array`` to ``rows`` rows (the other dimensions kept)."""
    return array.async_array.resize((rows, *array.shape[1:]))


def replace_attributes(group: Any, attrs: dict[str, Any]) -> Coroutine[Any, Any, Any]:
    """A coroutine writing ``attrs`` as the group's attributes (all of them); returns the group."""
    return group.update_attributes_async(attrs)


def grid_shape(array: Any) -> tuple[int, ...]:
    """The shape of one stored object (a shard when sharded, else a chunk)."""
    return tuple(int(n) for n in array.metadata.chunk_grid.chunk_shape)


def object_key(array: Any, coords: tuple[int, ...]) -> str:
    """The store key (relative to the store root) of the object at grid position ``coords``."""
    return f"{array.path}/{array.metadata.encode_chunk_key(coords)}"


def stored_keys(array: Any) -> set[str]:
    """The keys of every file stored under ``array``, its metadata included (relative to the store root)."""
    store = array.store_path.store

    async def listing() -> set[str]:
        return {key async for key in store.list_prefix(f"{array.path}/")}

    return run(listing())


def raw_chunk_writer(array: Any) -> Callable[[int, np.ndarray], None] | None:
    """A function writing ``values`` as the whole chunk at row block ``i`` of ``array``, or None.

    None unless the array is in a local store, zarr format 3, chunked over rows only (one chunk per
    row block), unsharded, and encoded by the ``bytes`` codec alone in little-endian order: then a
    chunk file is exactly the chunk's C-order bytes, as zarr itself would write it.
    """
    metadata = array.metadata
    store = array.store_path.store
    codecs = getattr(metadata, "codecs", ())
    if (
        getattr(metadata, "zarr_format", None) != 3
        or not isinstance(store, LocalStore)
        or len(codecs) != 1
        or not isinstance(codecs[0], BytesCodec)
        or (codecs[0].endian is not None and codecs[0].endian.value != "little")
        or tuple(array.chunks[1:]) != tuple(array.shape[1:])
    ):
        return None
    dtype = np.dtype(array.dtype).newbyteorder("<")
    chunk_shape = tuple(int(n) for n in array.chunks)
    root = Path(store.root)
    trailing = (0,) * (len(chunk_shape) - 1)

    def write(row_block: int, values: np.ndarray) -> None:
        if values.shape != chunk_shape or values.dtype != dtype:
            raise ValueError(f"chunk of {values.shape} {values.dtype}, expected {chunk_shape} {dtype}")
        path = root / object_key(array, (row_block, *trailing))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{uuid.uuid4().hex}.partial")
        try:
            with open(tmp, "wb") as file:
                file.write(memoryview(np.ascontiguousarray(values)).cast("B"))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    return write
