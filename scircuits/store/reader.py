"""Reading a store (format v2 or v1, ours or another tool's, or a collection's shards joined):
attributes, rows, splits, batches (read ahead on a background thread), statistics."""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

from scircuits.errors import ConfigError
from scircuits.store.batches import BufferCounters, plan_epoch, stream_batches
from scircuits.store.collection import check_shard, resolve_parts
from scircuits.store.errors import NotAStoreError
from scircuits.store.format import ACTS, ID_ARRAYS, decode_acts, upgraded_attrs
from scircuits.store.integrity import check_blocks_present, check_finite_rows, read_checked, verify
from scircuits.store.location import read_group, size_on_disk
from scircuits.store.stats import StatsAccumulator

if TYPE_CHECKING:
    import torch

Split = Literal["train", "eval", "all"]
SHUFFLE_BUFFER_BYTES = 256 << 20
PREFETCH_BLOCKS = 2  # blocks read ahead of the one being consumed
# Attributes that differ between the shards of one collection.
_PER_SHARD = frozenset({"n_tokens", "n_examples", "complete", "created", "shard_rank"})


@dataclass
class _Part:
    """One physical store of a logical store: its rows are rows [offset, offset + n_tokens)."""

    path: str
    acts: Any
    ids: dict[str, Any]
    attrs: dict[str, Any]
    n_tokens: int
    offset: int

    def arrays_written_whole(self) -> dict[str, Any]:
        """Arrays whose every block must exist on disk. Our writer writes even fill-value blocks
        ("chunk_rows" marks its stores); another tool may skip an all-zero id block, never acts."""
        return {ACTS: self.acts, **(self.ids if "chunk_rows" in self.attrs else {})}


class ReadCount:
    """Activation rows read from the files by a store and every view of it (threads included)."""

    def __init__(self) -> None:
        self.rows = 0
        self._lock = threading.Lock()

    def add(self, rows: int) -> None:
        with self._lock:
            self.rows += rows


class LabelledBatch(NamedTuple):
    acts: torch.Tensor  # (batch, d_model) float32
    example_ids: np.ndarray  # (batch,) int32
    token_ids: np.ndarray
    positions: np.ndarray


class ActivationStore:
    """A read-only view of a store on a local path or any fsspec URL zarr can open."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        storage_options: dict[str, Any] | None = None,
        *,
        site: str | None = None,
        prefetch: int = PREFETCH_BLOCKS,
    ):
        self.path = os.fspath(path)
        self._storage_options = storage_options
        self.prefetch = prefetch
        paths, manifest = resolve_parts(self.path, site)
        self.manifest = manifest
        self.parts: list[_Part] = []
        offset = 0
        for rank, part_path in enumerate(paths):
            group = read_group(part_path, storage_options)
            attrs = upgraded_attrs(dict(group.attrs))
            if manifest is not None:
                check_shard(part_path, attrs, manifest, rank)
            n = _int_attr(part_path, attrs, "n_tokens")
            ids = {name: group[name] for name in ID_ARRAYS}
            self.parts.append(_Part(part_path, group[ACTS], ids, attrs, n, offset))
            offset += n
        self.attrs: dict[str, Any] = self._joined_attrs(manifest)
        self._acts = self.parts[0].acts
        self.n_tokens = offset
        self.n_examples = _int_attr(self.path, self.attrs, "n_examples")
        self.d_model = _int_attr(self.path, self.attrs, "d_model")
        self.complete = bool(self.attrs.get("complete", False))
        self.source = self.attrs.get("source")
        self.act_dtype = str(self.attrs.get("dtype") or self._acts.dtype)
        self._check_shapes()
        for part in self.parts:
            check_blocks_present(part.path, part.arrays_written_whole(), part.n_tokens)
        self.last_counters = BufferCounters()
        self._count_cache: dict[tuple[str, bytes], np.ndarray] = {}
        self.excluded_rows = np.empty(0, dtype=np.int64)  # rows no split selects (``excluding``)
        self.acts_read = ReadCount()  # shared with the views of ``excluding``

    @property
    def collection_site(self) -> dict[str, str] | None:
        """``{"collection", "site", "collection_id"}`` when this store is a site of a collection."""
        if self.manifest is None:
            return None
        site_folder = os.path.dirname(self.parts[0].path.rstrip("/"))
        return {
            "collection": os.path.dirname(site_folder),
            "site": os.path.basename(site_folder),
            "collection_id": self.manifest.collection_id,
        }

    def excluding(self, rows: np.ndarray) -> ActivationStore:
        """A view of this store whose splits, counts and batches leave out ``rows`` (global row
        indices), e.g. tokens a trainer does not fit. The files are not touched."""
        view = copy.copy(self)
        view.excluded_rows = np.union1d(self.excluded_rows, np.asarray(rows, dtype=np.int64))
        view._count_cache = {}
        view.last_counters = BufferCounters()
        return view

    def _joined_attrs(self, manifest: Any) -> dict[str, Any]:
        first = dict(self.parts[0].attrs)
        if manifest is None:
            return first
        for part in self.parts[1:]:
            differing = sorted(
                k
                for k in (part.attrs.keys() | first.keys()) - _PER_SHARD
                if part.attrs.get(k) != first.get(k)
            )
            if differing:
                raise NotAStoreError(
                    f"{part.path} differs from {self.parts[0].path} in {', '.join(differing)}: the shards "
                    "are not of one collection; move the odd one away and collect again"
                )
        first.pop("shard_rank", None)
        first.update(
            n_tokens=sum(p.n_tokens for p in self.parts),
            n_examples=sum(int(p.attrs.get("n_examples", 0)) for p in self.parts),
            complete=all(bool(p.attrs.get("complete")) for p in self.parts),
            shards=len(self.parts),
        )
        return first

    def _check_shapes(self) -> None:
        for part in self.parts:
            if part.acts.ndim != 2 or part.acts.shape[1] != self.d_model:
                raise NotAStoreError(
                    f"{part.path}: acts has shape {part.acts.shape}, expected (n_tokens, {self.d_model})"
                )
            arrays = {ACTS: part.acts, **part.ids}
            short = [n for n, a in arrays.items() if a.shape[0] < part.n_tokens]
            if short:
                raise NotAStoreError(
                    f"{part.path}: array(s) {', '.join(short)} hold fewer rows than n_tokens={part.n_tokens}"
                )

    def _read(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of one array as stored, across the parts they lie in."""
        pieces = []
        for part in self.parts:
            lo, hi = max(start, part.offset), min(stop, part.offset + part.n_tokens)
            if lo < hi:
                array = part.acts if name == ACTS else part.ids[name]
                pieces.append(read_checked(part.path, array, lo - part.offset, hi - part.offset))
                if name == ACTS:
                    self.acts_read.add(hi - lo)
        if not pieces:
            array = self.parts[0].acts if name == ACTS else self.parts[0].ids[name]
            return read_checked(self.path, array, 0, 0)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    # ------------------------------------------------------------------ plain reads
    @property
    def dtype(self) -> str:
        """The activations' dtype (bfloat16 for a store that keeps bfloat16 bits in uint16)."""
        return self.act_dtype

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_tokens, self.d_model)

    @property
    def block_rows(self) -> int:
        """Rows per stored block: a shard when the array is sharded, else a chunk."""
        shards = getattr(self._acts, "shards", None)
        return int((shards or self._acts.chunks)[0])

    def block_bounds(self) -> list[tuple[int, int]]:
        """Each stored block's rows; a collection's blocks never straddle two of its shards."""
        step = self.block_rows
        return [
            (part.offset + start, part.offset + min(start + step, part.n_tokens))
            for part in self.parts
            for start in range(0, part.n_tokens, step)
        ]

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as float32 (read contiguous ranges; use iter_batches for shuffling)."""
        if not 0 <= start <= stop <= self.n_tokens:
            raise IndexError(f"rows [{start}, {stop}) outside the store's {self.n_tokens} rows")
        rows = self._read_acts(start, stop)
        return rows.astype(np.float32, copy=False)

    def _read_acts(self, start: int, stop: int, example_ids: np.ndarray | None = None) -> np.ndarray:
        """Rows [start, stop) as stored; a damaged file or a non-finite row is an error naming it."""
        rows = decode_acts(self._read(ACTS, start, stop), self.act_dtype)
        if example_ids is None and stop > start:
            example_ids = self.read_ids("example_ids", start, stop)
        check_finite_rows(self.path, rows, start, example_ids)
        return rows

    def read_ids(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = self.n_tokens if stop is None else stop
        return self._read(name, start, stop).astype(np.int32, copy=False)

    def verify(self, *, fast: bool = False) -> dict[str, Any]:
        """Check every data file: present and, unless ``fast``, decodable with finite values."""
        results = [
            verify(p.path, p.arrays_written_whole(), p.n_tokens, fast=fast, decode=self._decoder())
            for p in self.parts
        ]
        joined = dict(results[0])
        for other in results[1:]:
            for key in ("checked_files", "nonfinite_rows"):
                joined[key] += other[key]
            for key in ("missing", "damaged"):
                joined[key] = joined[key] + other[key]
        joined["ok"] = all(r["ok"] for r in results)
        return joined

    def _decoder(self):
        dtype = self.act_dtype
        return lambda rows: decode_acts(rows, dtype) if rows.ndim == 2 else rows

    @cached_property
    def token_ids(self) -> np.ndarray:
        return self.read_ids("token_ids")

    @cached_property
    def example_ids(self) -> np.ndarray:
        return self.read_ids("example_ids")

    @cached_property
    def positions(self) -> np.ndarray:
        return self.read_ids("positions")

    def size_on_disk(self) -> int:
        return sum(size_on_disk(p.path, self._storage_options) for p in self.parts)

    @property
    def compressors(self) -> list[str]:
        return [type(c).__name__ for c in (getattr(self._acts, "compressors", None) or ())]

    # ------------------------------------------------------------------ splits
    @cached_property
    def unique_example_ids(self) -> np.ndarray:
        """Sorted distinct example ids, gathered block by block."""
        found: set[int] = set()
        for start, stop in self.block_bounds():
            found.update(np.unique(self.read_ids("example_ids", start, stop)).tolist())
        return np.array(sorted(found), dtype=np.int64)

    def split_examples(self, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(train example ids, eval example ids), disjoint and sorted; a seeded draw of whole examples.

        With 0 < eval_fraction and at least two examples, eval holds at least one and train at least one.
        """
        if not 0 <= eval_fraction < 1:
            raise ConfigError(f"eval_fraction must be in [0, 1), not {eval_fraction}")
        ids = self.unique_example_ids
        n_eval = round(eval_fraction * ids.shape[0])
        if eval_fraction > 0 and ids.shape[0] >= 2:
            n_eval = min(max(n_eval, 1), ids.shape[0] - 1)
        order = np.random.default_rng(seed).permutation(ids.shape[0])
        return np.sort(ids[order[n_eval:]]), np.sort(ids[order[:n_eval]])

    def _selected_counts(self, split: Split, eval_ids: np.ndarray) -> np.ndarray:
        """Selected rows per block (cached: one pass over example_ids per split)."""
        key = (split, eval_ids.tobytes())
        if key not in self._count_cache:
            bounds = self.block_bounds()
            if split == "all" and not self.excluded_rows.size:
                counts = [stop - start for start, stop in bounds]
            else:
                counts = [
                    self._selected(self.read_ids("example_ids", a, b), split, eval_ids, a).shape[0]
                    for a, b in bounds
                ]
            self._count_cache[key] = np.array(counts, dtype=np.int64)
        return self._count_cache[key]

    def _selected(
        self, example_ids: np.ndarray, split: Split, eval_ids: np.ndarray, start: int
    ) -> np.ndarray:
        """Block-local indices of the selected rows of the block whose first row is ``start``."""
        if split == "all":
            chosen = np.ones(example_ids.shape[0], dtype=bool)
        else:
            in_eval = np.isin(example_ids, eval_ids)
            chosen = in_eval if split == "eval" else ~in_eval
        if self.excluded_rows.size:
            lo, hi = np.searchsorted(self.excluded_rows, [start, start + example_ids.shape[0]])
            chosen[self.excluded_rows[lo:hi] - start] = False
        return np.flatnonzero(chosen)

    def n_rows(self, split: Split = "all", *, eval_fraction: float = 0.05, split_seed: int = 0) -> int:
        """Rows in a split (train rows = rows of train examples)."""
        _, eval_ids = self.split_examples(eval_fraction, split_seed)
        return int(self._selected_counts(_check_split(split), eval_ids).sum())

    # ------------------------------------------------------------------ batches
    def iter_batches(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        split: Split = "train",
        eval_fraction: float = 0.05,
        shuffle_buffer_rows: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        epoch: int = 0,
        split_seed: int = 0,
        start_batch: int = 0,
    ) -> Iterator[torch.Tensor]:
        """Shuffled float32 batches (batch_size, d_model) of one epoch; see scircuits.store.batches.

        ``start_batch`` seeks: the epoch's batches from that one on, identical to those an unsought
        iterator yields there, without reading the activations of the batches skipped (a resumed
        training run starts mid-epoch this way).

        The train/eval split draws whole examples with ``split_seed`` (independent of ``seed``, so
        every shuffling seed sees the same split): eval examples never appear in train batches.
        Memory: the shuffle buffer (default about 256 MiB of float32 rows, at least two blocks) plus
        one block being read.
        """
        import torch

        for batch in self._iter_arrays(
            batch_size,
            seed=seed,
            split=split,
            eval_fraction=eval_fraction,
            shuffle_buffer_rows=shuffle_buffer_rows,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
            epoch=epoch,
            split_seed=split_seed,
            with_ids=False,
            start_batch=start_batch,
        ):
            yield torch.from_numpy(batch["acts"])

    def iter_labelled_batches(self, batch_size: int, **options: Any) -> Iterator[LabelledBatch]:
        """As iter_batches (same options, same rows in the same order), with each row's ids."""
        import torch

        for batch in self._iter_arrays(batch_size, with_ids=True, **options):
            yield LabelledBatch(
                torch.from_numpy(batch["acts"]), batch["example_ids"], batch["token_ids"], batch["positions"]
            )

    def batches_per_epoch(
        self,
        batch_size: int,
        *,
        split: Split = "train",
        eval_fraction: float = 0.05,
        split_seed: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> int:
        """How many batches each rank gets per epoch (the same for every rank and epoch)."""
        share = self.n_rows(split, eval_fraction=eval_fraction, split_seed=split_seed) // world_size
        return share // batch_size if drop_last else -(-share // batch_size)

    def default_shuffle_buffer_rows(self) -> int:
        return max(2 * self.block_rows, SHUFFLE_BUFFER_BYTES // (4 * self.d_model))

    def _iter_arrays(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        split: Split = "train",
        eval_fraction: float = 0.05,
        shuffle_buffer_rows: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        epoch: int = 0,
        split_seed: int = 0,
        with_ids: bool,
        start_batch: int = 0,
    ) -> Iterator[dict[str, np.ndarray]]:
        split = _check_split(split)
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, not {batch_size}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in [0, world_size={world_size})")
        _, eval_ids = self.split_examples(eval_fraction, split_seed)
        plan = plan_epoch(
            self.block_bounds(),
            self._selected_counts(split, eval_ids),
            batch_size=batch_size,
            seed=seed,
            epoch=epoch,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
        )
        self.last_counters = BufferCounters()

        def read_block(start: int, stop: int, with_ids: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
            names = ID_ARRAYS if with_ids else ("example_ids",)
            ids = {n: self.read_ids(n, start, stop) for n in names}
            return self._read_acts(start, stop, ids["example_ids"]), ids

        if self.prefetch > 0:
            read_block = _Prefetcher(
                read_block, [(a, b, with_ids) for a, b, _, _ in plan.blocks], self.prefetch
            )

        def select_rows(start: int, stop: int, ids: dict[str, np.ndarray]) -> np.ndarray:
            return self._selected(ids["example_ids"], split, eval_ids, start)

        yield from stream_batches(
            read_block,
            select_rows,
            plan,
            d_model=self.d_model,
            batch_size=batch_size,
            buffer_rows=shuffle_buffer_rows or self.default_shuffle_buffer_rows(),
            rng=np.random.default_rng([seed, epoch, rank, 1]),
            with_ids=with_ids,
            counters=self.last_counters,
            start_batch=start_batch,
            read_example_ids=lambda start, stop: self.read_ids("example_ids", start, stop),
        )

    # ------------------------------------------------------------------ statistics
    def stats(self, max_rows: int | None = None) -> dict[str, Any]:
        """Per-dimension mean, std, min, max, abs_max, nonfinite counts, and per-token L2 norms.

        With ``max_rows``, whole blocks spread evenly over the store are read until that many rows.
        """
        bounds = self.block_bounds()
        if max_rows is not None and max_rows < self.n_tokens:
            full = [b for b in bounds if b[1] - b[0] == self.block_rows]
            wanted = max(1, -(-max_rows // self.block_rows))
            candidates = full if len(full) >= wanted else bounds
            picks = np.unique(np.linspace(0, len(candidates) - 1, wanted).round().astype(int))
            bounds = [candidates[i] for i in picks]
        acc = StatsAccumulator(self.d_model)
        for start, stop in bounds:
            acc.add(decode_acts(self._read(ACTS, start, stop), self.act_dtype))
        result = acc.result()
        result["rows_total"] = self.n_tokens
        return result

    def describe(self) -> dict[str, Any]:
        """Attributes and layout, for display."""
        stored = self.size_on_disk()
        raw = self.n_tokens * self.d_model * np.dtype(self._acts.dtype).itemsize
        return {
            "path": self.path,
            "attrs": self.attrs,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "complete": self.complete,
            "block_rows": self.block_rows,
            "compressors": self.compressors,
            "size_on_disk": stored,
            "acts_raw_bytes": raw,
            "parts": [p.path for p in self.parts] if len(self.parts) > 1 else None,
        }


class _Prefetcher:
    """``read_block`` for a stream that reads its blocks in a known order: up to ``depth`` blocks
    ahead are read on a background thread while the caller works on the current one. A call out of
    that order (a sought stream materialising its buffer) is read directly."""

    def __init__(self, read_block: Any, order: list[tuple[int, int, bool]], depth: int):
        self._read = read_block
        self._order = order
        self._index = {key: i for i, key in enumerate(order)}
        self._next = 0  # index in order of the next block to submit
        self._pending: dict[tuple[int, int, bool], Future[Any]] = {}
        self._depth = depth
        self._executor: ThreadPoolExecutor | None = None

    def _fill(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scircuits-prefetch")
        while len(self._pending) < self._depth and self._next < len(self._order):
            key = self._order[self._next]
            self._next += 1
            self._pending[key] = self._executor.submit(self._read, *key)

    def __call__(self, start: int, stop: int, with_ids: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        key = (start, stop, with_ids)
        if key not in self._pending and self._index.get(key, -1) >= self._next:
            for stale in self._pending.values():  # the stream skipped ahead: read on from this block
                stale.cancel()
            self._pending.clear()
            self._next = self._index[key]
            self._fill()
        future = self._pending.pop(key, None)
        if future is None:
            return self._read(start, stop, with_ids)
        self._fill()
        return future.result()

    def __del__(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


def _check_split(split: str) -> Split:
    if split not in ("train", "eval", "all"):
        raise ConfigError(f"split must be train, eval or all, not {split!r}")
    return split  # type: ignore[return-value]


def _int_attr(path: str, attrs: dict[str, Any], key: str) -> int:
    value = attrs.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise NotAStoreError(f"{path}: attribute {key!r} must be a non-negative integer, not {value!r}")
    return value
