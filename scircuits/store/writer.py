"""The resumable store writer.

Rows are buffered one chunk at a time and written as whole, chunk-aligned blocks into arrays that
grow in big steps (zarr's ``append`` rewrites metadata on every call). A partial last chunk is
written padded with zeros. Progress (``n_tokens``, ``n_examples``) is recorded in the group
attributes only after every row of the counted examples has been written; zarr's local store
writes each file through a rename, so a process killed at any moment leaves either the old or the
new version of every file. On resume the rows past the recorded progress are rewritten, and at
close the arrays are trimmed to ``n_tokens``: a killed and resumed collection ends byte-identical
to an uninterrupted one.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import os
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from zarr.errors import NodeNotFoundError

from scircuits.files import Flock
from scircuits.store import zarr_internals
from scircuits.store.errors import (
    DamagedStoreError,
    NonFiniteActivationsError,
    NotAStoreError,
    StoreCompleteError,
    StoreError,
    StoreMismatchError,
)
from scircuits.store.format import (
    ACTS,
    ARRAYS,
    DEFAULT_COMPRESSOR,
    FORMAT,
    FORMAT_VERSION,
    ID_ARRAYS,
    ID_DTYPE,
    check_act_dtype,
    compressor_codecs,
    decode_acts,
    default_chunk_rows,
    encode_acts,
    identity_attrs,
    identity_differences,
    identity_of,
    normalise_compressor,
    storage_dtype,
)
from scircuits.store.integrity import all_finite
from scircuits.store.location import check_format, local_path, lock_store, open_group, remove_partial_files
from scircuits.store.remote import RemoteLock
from scircuits.version import __version__

_FIRST_CAPACITY_CHUNKS = 16
# Write every chunk, even all-zero ones: zarr's emptiness test is slow on float16, and a store whose
# files all exist is simpler to compare and to read with other tools.
_ARRAY_CONFIG = {"write_empty_chunks": True}


class ActivationStoreWriter:
    """Appends whole examples to a format-v1 store. Create with :meth:`open`."""

    def __init__(self, path: str, group: Any, lock: Flock | RemoteLock | None, *, complete: bool):
        self.path = path
        self._group = group
        self._lock = lock
        self.complete = complete
        self._closed = False
        self._inflight: Future[Any] | None = None
        self._inflight_progress: tuple[int, int] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._arrays = (
            {name: group[name].with_config(_ARRAY_CONFIG) for name in ARRAYS} if not complete else {}
        )
        attrs = dict(group.attrs)
        self.d_model = int(attrs["d_model"])
        self.dtype = str(attrs["dtype"])
        self._recorded_tokens = int(attrs["n_tokens"])
        self._recorded_examples = int(attrs["n_examples"])
        self._n_tokens = self._recorded_tokens
        self._n_examples = self._recorded_examples
        if complete:
            return
        acts = self._arrays[ACTS]
        self.chunk_rows = int(acts.chunks[0])
        raw = {name: zarr_internals.raw_chunk_writer(a) for name, a in self._arrays.items()}
        same_rows = all(int(a.chunks[0]) == self.chunk_rows for a in self._arrays.values())
        native = sys.byteorder == "little"  # the buffers are native; raw chunks are little-endian
        self._raw_writers = raw if same_rows and native and all(w is not None for w in raw.values()) else None
        # A kill while growing the arrays can leave them of different lengths: use the shortest.
        self._capacity = min(int(a.shape[0]) for a in self._arrays.values())
        short = [n for n, a in self._arrays.items() if a.shape[0] < self._recorded_tokens]
        if short or acts.shape[1:] != (self.d_model,):
            raise NotAStoreError(
                f"{path}: arrays {', '.join(short) or ACTS} do not match the recorded progress "
                f"({self._recorded_tokens} tokens of width {self.d_model}); "
                "delete the store and collect again"
            )
        self._pending: deque[tuple[int, int]] = deque()  # (end row, examples counted at that end)
        # Double buffering: one chunk is written in the background while the next one fills.
        self._spare: tuple[np.ndarray, dict[str, np.ndarray]] | None = None
        self._buf_acts = np.zeros((self.chunk_rows, self.d_model), dtype=storage_dtype(self.dtype))
        self._buf_ids = {name: np.zeros(self.chunk_rows, dtype=ID_DTYPE) for name in ID_ARRAYS}
        self._positions = np.arange(1024, dtype=ID_DTYPE)  # sliced for each example's positions
        self._buf_start = (self._recorded_tokens // self.chunk_rows) * self.chunk_rows
        self._buf_fill = self._recorded_tokens - self._buf_start
        if self._buf_fill:  # the recorded rows of the chunk that resumes
            self._buf_acts[: self._buf_fill] = acts[self._buf_start : self._recorded_tokens]
            for name in ID_ARRAYS:
                self._buf_ids[name][: self._buf_fill] = self._arrays[name][
                    self._buf_start : self._recorded_tokens
                ]

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        attrs: dict[str, Any],
        *,
        d_model: int,
        dtype: str = "float16",
        chunk_rows: int | None = None,
        compressor: str | None = DEFAULT_COMPRESSOR,
    ) -> ActivationStoreWriter:
        """Create a store, resume an incomplete one with the same identity, or reopen a complete one.

        ``chunk_rows`` (default: about 4 MiB of acts per chunk) and ``compressor`` apply to a new
        store; a resumed store keeps its own layout.
        """
        dtype = check_act_dtype(dtype)
        if d_model <= 0:
            raise StoreError(f"d_model must be positive, not {d_model}")
        identity = identity_attrs(attrs, d_model=d_model, dtype=dtype)
        compressor = normalise_compressor(compressor)
        rows = chunk_rows or default_chunk_rows(d_model, dtype)
        if rows <= 0:
            raise StoreError(f"chunk_rows must be positive, not {rows}")
        text = os.fspath(path)
        local = local_path(text)
        lock: Flock | RemoteLock
        if local is not None:
            if local.exists() and not local.is_dir():
                raise NotAStoreError(f"{text} is a file, not an activation store; choose another --out")
            local.mkdir(parents=True, exist_ok=True)
            lock = lock_store(local)
        else:  # no flock on a remote filesystem: a lock object made by an exclusive (conditional) put
            lock = RemoteLock(text, "activation store")
        try:
            try:
                group = cls._open_or_create(text, local, identity, rows, compressor)
            except ValueError as exc:  # a truncated or edited zarr.json (JSONDecodeError) or array metadata
                if isinstance(exc, StoreError):
                    raise
                raise DamagedStoreError(
                    f"{text}: the store's metadata cannot be read ({str(exc).splitlines()[0]}); it is "
                    "damaged: move it away (or delete it) and collect again"
                ) from None
            return cls(text, group, lock, complete=bool(group.attrs.get("complete")))
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _open_or_create(
        cls, text: str, local: Path | None, identity: dict[str, Any], rows: int, compressor: str | None
    ) -> Any:
        if local is not None:
            exists = (local / "zarr.json").exists()
            if not exists:
                # Only the temporary file of a killed first write of zarr.json may be there already.
                leftovers = [
                    p
                    for p in local.iterdir()
                    if not (p.name.startswith("zarr.") and p.name.endswith(".partial"))
                ]
                if leftovers:
                    raise NotAStoreError(
                        f"{text} exists and is not an activation store; choose another --out, or pass "
                        "--force to move it aside"
                    )
                for tmp in local.iterdir():
                    tmp.unlink()
        else:
            try:
                open_group(text, "r")
                exists = True
            except (NodeNotFoundError, FileNotFoundError):
                exists = False
        if not exists:
            attrs = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                **identity,
                "n_tokens": 0,
                "n_examples": 0,
                "complete": False,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "scircuits_version": _version(),
                "chunk_rows": rows,
                "compressor": compressor,
            }
            # a remote store holds the writer's lock object already: "a" creates the group beside it
            group = open_group(text, "w-" if local is not None else "a", attributes=attrs)
        else:
            group = open_group(text, "r+")
            stored = dict(group.attrs)
            try:
                check_format(text, stored, writing=not stored.get("complete"))
            except NotAStoreError as exc:
                raise NotAStoreError(
                    f"{exc}; choose another --out, or pass --force to move it aside"
                ) from None
            differences = identity_differences(identity_of(stored), identity)
            if differences:
                listed = "; ".join(f"{k}: stored {old!r}, now {new!r}" for k, old, new in differences)
                raise StoreMismatchError(
                    f"{text} holds activations of a different collection ({listed}). "
                    "Write to another --out, or pass --force to move it aside (nothing is deleted)."
                )
            if stored.get("complete"):
                return group
            if local is not None:
                remove_partial_files(local)
        _create_missing_arrays(group, identity["d_model"], identity["dtype"], group.attrs)
        return group

    # ------------------------------------------------------------------ progress
    @property
    def n_examples_written(self) -> int:
        """Examples stored or buffered so far, counting those of earlier runs: skip this many."""
        return self._n_examples

    @property
    def n_tokens_written(self) -> int:
        return self._n_tokens

    @property
    def n_examples_recorded(self) -> int:
        """Examples whose rows are written and counted in the store's attributes."""
        return self._recorded_examples

    # ------------------------------------------------------------------ writing
    def append_example(self, example_index: int, token_ids: Any, acts: Any) -> None:
        """Append one example: its token ids (n,) and activations (n, d_model); positions are 0..n-1."""
        self._check_writable()
        tokens = _as_numpy(token_ids).reshape(-1)
        rows = _as_numpy(acts)
        n = tokens.shape[0]
        if rows.ndim != 2 or rows.shape != (n, self.d_model):
            raise StoreError(
                f"example {example_index}: activations have shape {tuple(rows.shape)}, expected "
                f"({n}, {self.d_model}) for {n} token ids"
            )
        if not 0 <= int(example_index) <= np.iinfo(ID_DTYPE).max:
            raise StoreError(f"example index {example_index} is not a non-negative int32")
        stored = self._checked_rows(int(example_index), rows)
        token_ids32 = tokens.astype(ID_DTYPE, copy=False)
        if tokens.dtype != ID_DTYPE and not np.array_equal(token_ids32, tokens):
            raise StoreError(f"example {example_index}: token ids do not fit int32")
        if n > self._positions.shape[0]:
            self._positions = np.arange(max(n, 2 * self._positions.shape[0]), dtype=ID_DTYPE)
        self._n_tokens += n
        self._n_examples += 1
        self._pending.append((self._n_tokens, self._n_examples))
        done = 0
        while done < n:
            take = min(self.chunk_rows - self._buf_fill, n - done)
            fill, stop = self._buf_fill, self._buf_fill + take
            self._buf_acts[fill:stop] = stored[done : done + take]
            self._buf_ids["token_ids"][fill:stop] = token_ids32[done : done + take]
            self._buf_ids["example_ids"][fill:stop] = example_index
            self._buf_ids["positions"][fill:stop] = self._positions[done : done + take]
            self._buf_fill = stop
            done += take
            if self._buf_fill == self.chunk_rows:
                self._write_buffer(wait=False)
                self._swap_buffers()
                self._buf_start += self.chunk_rows
                self._buf_fill = 0
        if not self._buf_fill:
            self._record_progress()

    def flush(self) -> None:
        """Write every appended example and record it, so a crash from now on keeps it."""
        self._check_writable()
        if self._buf_fill:
            self._write_buffer(wait=True)
        else:
            self._record_progress()

    def close(self, complete: bool = True) -> None:
        """Flush; with ``complete`` trim the arrays to n_tokens and mark the store complete."""
        if self._closed:
            return
        try:
            if not self.complete:
                self.flush()
                if complete:
                    self._resize(self._n_tokens)
                    self._set_attrs({"complete": True})
                    self.complete = True
        finally:
            self._closed = True
            if self._executor is not None:
                self._executor.shutdown(wait=True)
            if self._lock is not None:
                self._lock.release()

    def __enter__(self) -> ActivationStoreWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.close(complete=exc_type is None)

    # ------------------------------------------------------------------ internals
    def _check_writable(self) -> None:
        if self._closed:
            raise StoreError(f"{self.path}: the writer is closed")
        if self.complete:
            raise StoreCompleteError(
                f"{self.path} is already complete ({self._n_examples} examples); nothing more can be "
                "appended. Delete it or write to another --out to collect again."
            )

    def _checked_rows(self, example_index: int, rows: np.ndarray) -> np.ndarray:
        """The rows in the store's dtype; refuses NaN, inf and values that overflow that dtype."""
        if not np.issubdtype(rows.dtype, np.floating):
            rows = rows.astype(np.float32)
        stored = encode_acts(rows, self.dtype)
        if all_finite(stored if self.dtype != "bfloat16" else rows) and (
            self.dtype != "bfloat16" or all_finite(decode_acts(stored, self.dtype))
        ):
            return stored
        n_nan = int(np.isnan(rows).sum())
        n_inf = int(np.isinf(rows).sum())
        n_overflow = int((~np.isfinite(decode_acts(stored, self.dtype))).sum()) - n_nan - n_inf
        parts = [f"{n_nan} NaN", f"{n_inf} inf"]
        if n_overflow:
            parts.append(f"{n_overflow} finite values too large for {self.dtype} (use --dtype float32)")
        raise NonFiniteActivationsError(
            f"example {example_index}: activations hold {', '.join(parts)} among {rows.size} values "
            f"({rows.shape[0]} tokens); nothing of this example was stored",
            example_index=example_index,
            n_nan=n_nan,
            n_inf=n_inf,
            n_overflow=n_overflow,
        )

    def _write_buffer(self, *, wait: bool) -> None:
        """Write the buffered chunk (zero-padded when partial), then record the progress it covers.

        The four chunk writes, then the progress update, once every write has finished: written as
        files directly for an uncompressed local store (``zarr_internals.raw_chunk_writer``), else
        in one trip to zarr's event loop. Without ``wait`` they run on a background thread while
        the caller fills the other buffer; at most one write is in flight.
        """
        start, stop = self._buf_start, self._buf_start + self.chunk_rows
        if self._buf_fill < self.chunk_rows:
            self._buf_acts[self._buf_fill :] = 0
            for values in self._buf_ids.values():
                values[self._buf_fill :] = 0
        self._wait()
        self._ensure_capacity(stop)
        columns = {ACTS: self._buf_acts, **self._buf_ids}
        progress = self._progress_after(self._buf_start + self._buf_fill)
        arrays, group = self._arrays, self._group

        raw = self._raw_writers

        async def write_then_record() -> Any:
            if raw is None:
                await asyncio.gather(
                    *(
                        zarr_internals.set_rows(arrays[name], start, stop, values)
                        for name, values in columns.items()
                    )
                )
            if progress is None:
                return group
            return await zarr_internals.replace_attributes(group, _progress_attrs(group, progress))

        def task() -> Any:
            if raw is not None:
                for name, values in columns.items():
                    raw[name](start // self.chunk_rows, values)
                if progress is None:
                    return group
            return zarr_internals.run(write_then_record())

        if wait:
            self._finish(task(), progress)
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scircuits-store-writer")
        self._inflight = self._executor.submit(task)
        self._inflight_progress = progress

    def _wait(self) -> None:
        """Wait for the write in flight (raising its error, if any) and take note of its progress."""
        if self._inflight is not None:
            future, progress = self._inflight, self._inflight_progress
            self._inflight, self._inflight_progress = None, None
            self._finish(future.result(), progress)

    def _finish(self, group: Any, progress: tuple[int, int] | None) -> None:
        self._group = group
        if progress is not None:
            self._recorded_tokens, self._recorded_examples = progress

    def _swap_buffers(self) -> None:
        """Fill the other buffer next (its own write finished before the last one started)."""
        if self._spare is None:
            self._spare = (
                np.zeros_like(self._buf_acts),
                {n: np.zeros_like(v) for n, v in self._buf_ids.items()},
            )
        current = (self._buf_acts, self._buf_ids)
        self._buf_acts, self._buf_ids = self._spare
        self._spare = current

    def _progress_after(self, durable_rows: int) -> tuple[int, int] | None:
        """Pop the examples that end within ``durable_rows``; the new (n_tokens, n_examples) or None."""
        tokens, examples = self._recorded_tokens, self._recorded_examples
        while self._pending and self._pending[0][0] <= durable_rows:
            tokens, examples = self._pending.popleft()
        if (tokens, examples) == (self._recorded_tokens, self._recorded_examples):
            return None
        return tokens, examples

    def _record_progress(self) -> None:
        """Record examples that are already entirely written (those ending at a chunk boundary)."""
        self._wait()
        progress = self._progress_after(self._buf_start)
        if progress is not None:
            self._set_attrs(_progress_attrs(self._group, progress))
            self._recorded_tokens, self._recorded_examples = progress

    def _set_attrs(self, changes: dict[str, Any]) -> None:
        """One write of the group's metadata (zarr's ``attrs.update`` writes once per key)."""
        self._wait()
        self._group.update_attributes(changes)

    def _ensure_capacity(self, rows: int) -> None:
        if rows <= self._capacity:
            return
        grown = max(rows, 2 * self._capacity, _FIRST_CAPACITY_CHUNKS * self.chunk_rows)
        grown = -(-grown // self.chunk_rows) * self.chunk_rows
        self._resize(grown)
        self._capacity = grown

    def _resize(self, rows: int) -> None:
        self._wait()
        arrays = [a for a in self._arrays.values() if a.shape[0] != rows]

        async def resize_all() -> None:
            await asyncio.gather(*(zarr_internals.resize_rows(a, rows) for a in arrays))

        zarr_internals.run(resize_all())


def _progress_attrs(group: Any, progress: tuple[int, int]) -> dict[str, Any]:
    """All of the group's attributes with new progress (replace_attributes replaces them all)."""
    return {**group.attrs.asdict(), "n_tokens": progress[0], "n_examples": progress[1]}


def _create_missing_arrays(group: Any, d_model: int, dtype: str, attrs: Any) -> None:
    """Create the arrays of a new store (also of one killed before its arrays existed)."""
    rows = int(attrs["chunk_rows"])
    codecs = compressor_codecs(attrs.get("compressor"))
    if ACTS not in group:
        group.create_array(
            ACTS,
            shape=(0, d_model),
            chunks=(rows, d_model),
            dtype=storage_dtype(dtype),
            compressors=codecs,
            fill_value=0,
        )
    for name in ID_ARRAYS:
        if name not in group:
            group.create_array(
                name, shape=(0,), chunks=(rows,), dtype=ID_DTYPE, compressors=codecs, fill_value=0
            )


def _as_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, possibly bfloat16 or on a GPU
        values = values.detach().cpu()
        if values.is_floating_point():
            values = values.float()
        values = values.numpy()
    return np.asarray(values)


def _version() -> str:
    return __version__
