"""Shuffled minibatches with bounded memory: a chunk-order permutation plus a shuffle buffer.

Each epoch permutes the store's row blocks (whole chunks) with a generator seeded by (seed, epoch).
The selected rows (train or eval examples) of the permuted blocks form one sequence that is cut into
``world_size`` contiguous, disjoint shares of equal size (within one row). A rank reads only the
blocks its share touches, whole, and mixes their rows through a buffer of ``buffer_rows`` rows from
which batches are drawn at random. Rows are never fancy-indexed across chunks.

Every rank yields the same number of batches: ``floor(min_share / batch_size)`` with ``drop_last``,
else ``ceil(min_share / batch_size)`` (the last batch may be short). With ``world_size == 1`` and
``drop_last=False`` every selected row appears exactly once per epoch; with more ranks a rank whose
share is one row longer than the smallest may drop that row.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from scircuits.store.format import ID_ARRAYS


@dataclass(frozen=True)
class BlockPlan:
    """Which rows of which blocks one rank reads in one epoch, in reading order."""

    blocks: list[tuple[int, int, int, int]]  # (block start row, block stop row, first, last selected row)
    share_rows: int
    n_batches: int


def plan_epoch(
    block_bounds: list[tuple[int, int]],
    selected_counts: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    drop_last: bool,
) -> BlockPlan:
    order = np.random.default_rng([seed, epoch]).permutation(len(block_bounds))
    counts = selected_counts[order]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    total = int(offsets[-1])
    lo, hi = rank * total // world_size, (rank + 1) * total // world_size
    min_share = total // world_size
    n_batches = min_share // batch_size if drop_last else -(-min_share // batch_size)
    blocks = []
    for position, block in enumerate(order):
        first, last = max(lo, offsets[position]), min(hi, offsets[position + 1])
        if first < last:
            start, stop = block_bounds[block]
            blocks.append((start, stop, int(first - offsets[position]), int(last - offsets[position])))
    return BlockPlan(blocks=blocks, share_rows=hi - lo, n_batches=n_batches)


@dataclass
class BufferCounters:
    """What the stream held: rows in the shuffle buffer plus rows of the block being read."""

    peak_rows_held: int = 0
    blocks_read: int = 0
    rows_read: int = 0


@dataclass
class ShuffleBuffer:
    """A fixed-size row buffer from which random rows are drawn out (holes are refilled from the end).

    ``refs`` holds each row's index in the store. While a stream seeks (``materialised`` False) only
    the references move, through the same random draws, so no activation is read; ``materialise``
    then reads the rows still held.
    """

    capacity: int
    d_model: int
    rng: np.random.Generator
    with_ids: bool
    materialised: bool = True
    count: int = 0
    acts: np.ndarray = field(init=False)
    ids: dict[str, np.ndarray] = field(init=False)
    refs: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.refs = np.empty(self.capacity, dtype=np.int64)
        self.acts = np.empty((self.capacity if self.materialised else 0, self.d_model), dtype=np.float32)
        self.ids = (
            {name: np.empty(self.capacity, dtype=np.int32) for name in ID_ARRAYS} if self.with_ids else {}
        )

    @property
    def space(self) -> int:
        return self.capacity - self.count

    def put(self, refs: np.ndarray, acts: np.ndarray | None, ids: dict[str, np.ndarray]) -> None:
        stop = self.count + refs.shape[0]
        self.refs[self.count : stop] = refs
        if self.materialised:
            self.acts[self.count : stop] = acts
            for name, values in self.ids.items():
                values[self.count : stop] = ids[name]
        self.count = stop

    def draw(self, n: int) -> dict[str, np.ndarray]:
        picked = self.rng.choice(self.count, size=n, replace=False)
        out = {"acts": self.acts[picked]} if self.materialised else {}
        if self.materialised:
            out.update({name: values[picked] for name, values in self.ids.items()})
        keep = self.count - n
        holes = picked[picked < keep]
        movers = np.setdiff1d(np.arange(keep, self.count), picked, assume_unique=True)
        self.refs[holes] = self.refs[movers]
        if self.materialised:
            self.acts[holes] = self.acts[movers]
            for values in self.ids.values():
                values[holes] = values[movers]
        self.count = keep
        return out

    def materialise(self, blocks: list[tuple[int, int]], read_block, counters: BufferCounters) -> None:
        """Read the activations (and ids) of the rows held, from the ``blocks`` (start, stop) they lie in."""
        self.acts = np.empty((self.capacity, self.d_model), dtype=np.float32)
        self.materialised = True
        refs = self.refs[: self.count]
        for start, stop in blocks:
            slots = np.flatnonzero((refs >= start) & (refs < stop))
            if not slots.size:
                continue
            acts, ids = read_block(start, stop, self.with_ids)
            counters.blocks_read += 1
            counters.rows_read += stop - start
            local = refs[slots] - start
            self.acts[slots] = acts[local].astype(np.float32, copy=False)
            for name, values in self.ids.items():
                values[slots] = ids[name][local]
            del acts, ids


def stream_batches(
    read_block,
    select_rows,
    plan: BlockPlan,
    *,
    d_model: int,
    batch_size: int,
    buffer_rows: int,
    rng: np.random.Generator,
    with_ids: bool,
    counters: BufferCounters,
    start_batch: int = 0,
    read_example_ids=None,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield batches ``start_batch`` .. ``plan.n_batches - 1``: dicts with "acts" (float32) and, ``with_ids``,
    the id columns. The batches are those an unsought stream yields from that point, bit for bit.

    ``read_block(start, stop, with_ids)`` returns (acts, ids) of a whole block (ids always hold
    "example_ids", and the other id columns when ``with_ids``);
    ``select_rows(start, stop, ids)`` returns the block-local indices of its selected rows, in order;
    ``read_example_ids(start, stop)`` (needed when ``start_batch`` > 0) returns a block's
    "example_ids" only: seeking past the first batches reads ids, not activations.
    """
    seeking = start_batch > 0
    if seeking and read_example_ids is None:
        raise ValueError("start_batch > 0 needs read_example_ids")
    buffer = ShuffleBuffer(max(buffer_rows, batch_size), d_model, rng, with_ids, materialised=not seeking)
    seen: list[tuple[int, int]] = []  # blocks read so far (rows held while seeking lie in them)
    emitted = 0

    def ready_to_yield() -> None:
        if not buffer.materialised:
            buffer.materialise(seen, read_block, counters)

    def full_batches() -> Iterator[dict[str, np.ndarray]]:
        nonlocal emitted
        while buffer.space == 0 and emitted < plan.n_batches:
            if emitted < start_batch:
                buffer.draw(batch_size)  # references only: nothing is read for a skipped batch
                emitted += 1
                continue
            ready_to_yield()
            emitted += 1
            yield buffer.draw(batch_size)

    for start, stop, first, last in plan.blocks:
        if emitted >= plan.n_batches:
            return
        seen.append((start, stop))
        acts: np.ndarray | None = None
        if buffer.materialised:
            acts, ids = read_block(start, stop, with_ids)
            counters.blocks_read += 1
            counters.rows_read += stop - start
            counters.peak_rows_held = max(counters.peak_rows_held, buffer.count + (stop - start))
        else:
            ids = {"example_ids": read_example_ids(start, stop)}
        chosen = select_rows(start, stop, ids)[first:last]
        done = 0
        while done < chosen.shape[0]:
            if emitted >= plan.n_batches:
                return
            if buffer.materialised and acts is None:  # the seek ended inside this block
                acts, ids = read_block(start, stop, with_ids)
                counters.blocks_read += 1
                counters.rows_read += stop - start
                counters.peak_rows_held = max(counters.peak_rows_held, buffer.count + (stop - start))
            take = chosen[done : done + buffer.space]
            if acts is None:
                buffer.put(take + start, None, {})
            else:
                buffer.put(
                    take + start,
                    acts[take].astype(np.float32, copy=False),
                    {n: ids[n][take] for n in buffer.ids},
                )
            done += take.shape[0]
            yield from full_batches()
        del acts, ids
    while buffer.count and emitted < plan.n_batches:
        n = min(batch_size, buffer.count)
        if emitted < start_batch:
            buffer.draw(n)
            emitted += 1
            continue
        ready_to_yield()
        emitted += 1
        yield buffer.draw(n)
