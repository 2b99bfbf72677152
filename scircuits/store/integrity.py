"""Integrity of a stored array: every block file present, every block decodable, every value finite.

Zarr reads a missing chunk file as its fill value (zeros) and a truncated one as a decoding error
deep inside its codec pipeline. Here both become errors that name the file and say what to do.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from scircuits.store import zarr_internals
from scircuits.store.errors import DamagedStoreError, NonFiniteActivationsError

_EXPONENT_BITS = {np.dtype("float16"): (np.uint16, 0x7C00), np.dtype("float32"): (np.uint32, 0x7F800000)}


def all_finite(values: np.ndarray) -> bool:
    """No NaN or inf: checked on the exponent bits (float16 arithmetic is slow on many CPUs)."""
    if values.dtype not in _EXPONENT_BITS:
        return bool(np.isfinite(values).all())
    uint, mask = _EXPONENT_BITS[values.dtype]
    return values.size == 0 or int(np.bitwise_and(values.view(uint), mask).max()) != mask


def _grid_rows(array: Any) -> int:
    """Rows per stored object (a shard when sharded, else a chunk)."""
    return zarr_internals.grid_shape(array)[0]


def block_keys(array: Any, start: int, stop: int) -> list[str]:
    """Store keys (relative to the store root) of the files holding rows [start, stop) of ``array``."""
    grid = zarr_internals.grid_shape(array)
    rows = int(grid[0])
    first, last = start // rows, max(start, stop - 1) // rows
    trailing = [range(math.ceil(n / c)) for n, c in zip(array.shape[1:], grid[1:], strict=True)]
    keys = []
    for row_block in range(first, last + 1):
        for rest in itertools.product(*trailing):
            keys.append(zarr_internals.object_key(array, (row_block, *rest)))
    return keys


def missing_block_keys(array: Any, n_rows: int) -> list[str]:
    """The files that should hold rows [0, n_rows) of ``array`` but are absent."""
    if n_rows <= 0:
        return []
    present = zarr_internals.stored_keys(array)
    return [key for key in block_keys(array, 0, n_rows) if key not in present]


def check_blocks_present(path: str, arrays: dict[str, Any], n_rows: int) -> None:
    """DamagedStoreError naming the first missing files of any array among rows [0, n_rows)."""
    missing = [key for array in arrays.values() for key in missing_block_keys(array, n_rows)]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DamagedStoreError(
            f"{path}: the store is damaged: {len(missing)} data file(s) missing ({shown}); "
            "zarr would read them as zeros. Delete the store and collect it again."
        )


def read_checked(path: str, array: Any, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of ``array``; a file that does not decode is a DamagedStoreError naming it."""
    try:
        return np.asarray(array[start:stop])
    except Exception as exc:  # zarr raises ValueError, RuntimeError or codec errors for a broken file
        failure = exc
    step = _grid_rows(array)
    for block_start in range((start // step) * step, stop, step):  # find the file that fails
        lo, hi = max(start, block_start), min(stop, block_start + step)
        try:
            array[lo:hi]
        except Exception as exc:
            start, stop, failure = lo, hi, exc
            break
    keys = ", ".join(block_keys(array, start, stop))
    raise DamagedStoreError(
        f"{path}: the store is damaged: {keys} (rows {start}-{stop - 1}) cannot be decoded "
        f"({type(failure).__name__}: {failure}). Delete the store and collect it again."
    )


def check_finite_rows(path: str, rows: np.ndarray, start: int, example_ids: Iterable[int] | None) -> None:
    """NonFiniteActivationsError naming the first non-finite row and its example."""
    if all_finite(rows):
        return
    bad = np.flatnonzero(~np.isfinite(rows.astype(np.float32)).all(axis=1))
    first = int(bad[0])
    ids = None if example_ids is None else np.asarray(list(example_ids))
    example = -1 if ids is None else int(ids[first])
    where = f"row {start + first}" + ("" if example < 0 else f" (example {example})")
    values = rows[bad].astype(np.float32)
    raise NonFiniteActivationsError(
        f"{path}: {len(bad)} stored row(s) hold NaN or inf, the first at {where}; the store was "
        "written by another tool or altered after writing. Delete it and collect it again.",
        example_index=example,
        n_nan=int(np.isnan(values).sum()),
        n_inf=int(np.isinf(values).sum()),
        n_overflow=0,
    )


def verify(
    path: str, arrays: dict[str, Any], n_rows: int, *, fast: bool = False, decode: Any = None
) -> dict[str, Any]:
    """Check every file of every array: present, and (unless ``fast``) decodable and finite
    (``decode`` maps stored rows to floats, for activations kept as bits).

    Returns {"checked_files", "missing", "damaged", "nonfinite_rows", "ok"}; never raises for damage.
    """
    missing = [key for array in arrays.values() for key in missing_block_keys(array, n_rows)]
    damaged: list[str] = []
    nonfinite = 0
    checked = sum(len(block_keys(a, 0, n_rows)) for a in arrays.values()) if n_rows else 0
    if not fast and not missing:
        for array in arrays.values():
            step = _grid_rows(array)
            for start in range(0, n_rows, step):
                stop = min(start + step, n_rows)
                try:
                    rows = read_checked(path, array, start, stop)
                except DamagedStoreError:
                    damaged.extend(block_keys(array, start, stop))
                    continue
                if decode is not None and array is arrays.get("acts"):
                    rows = decode(rows)
                if rows.dtype.kind == "f" and not all_finite(rows):
                    nonfinite += int((~np.isfinite(rows.astype(np.float32)).all(axis=-1)).sum())
    return {
        "checked_files": checked,
        "missing": missing,
        "damaged": damaged,
        "nonfinite_rows": nonfinite,
        "fast": fast,
        "ok": not (missing or damaged or nonfinite),
    }
