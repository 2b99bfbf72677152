"""Every use of zarr beyond its synchronous, documented API, in one place.

The writer runs its chunk writes, resizes and progress update together in one trip to zarr's own
event loop (zarr objects are bound to that loop, so ``asyncio.run`` cannot run them), and the
integrity checks list a store's files and name them. zarr exposes no public call for either: these
go through ``zarr.core.sync`` and array metadata, which a zarr release may change. pyproject.toml
bounds zarr below the next minor for that reason, and tests/test_zarr_internals.py exercises each
function here on a real store, so an upgrade that breaks one fails there first, by name.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np
from zarr.core.sync import sync as _sync

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
