"""Tracing sequences into one store per site, every site from the same forward, resumably.

The sequences of one process arrive numbered locally (0, 1, ...); each carries its global index,
stored as its ``example_ids``. Each site's writer knows how many sequences it holds; a rerun starts
at the window holding the first sequence some writer lacks, traces that window again and appends to
each writer only the sequences it lacks, so a killed collection ends as an uninterrupted one would.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

Item = tuple[int, int, list[int]]  # (local index, global index, token ids)
SiteKey = tuple[int, str]  # (layer, site)


def windows(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while window := list(itertools.islice(iterator, size)):
        yield window


@dataclass
class WriteCounts:
    new_examples: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    lengths: list[int] = field(default_factory=list)


def write_items(
    items_from: Callable[[int], Iterator[Item]],
    writers: dict[SiteKey, Any],
    tracer: Any,
    *,
    batch_size: int,
    window_size: int,
    on_window: Callable[[int, int], None] | None = None,
) -> WriteCounts:
    """Trace the items (``items_from(start)`` yields them from local index ``start``) and append each
    site's rows to its writer. Batches are formed within windows of ``window_size`` items sorted by
    length, so a resumed run forms the same batches. ``on_window(appended, new_tokens)`` reports."""
    start_time = time.monotonic()
    held = {key: writer.n_examples_written for key, writer in writers.items()}
    skip = min(held.values())
    counts = WriteCounts()
    for window in windows(items_from(skip - skip % window_size), window_size):
        rows: dict[tuple[SiteKey, int], Any] = {}
        # The whole window is traced, rows already stored included, so that every batch is the one an
        # uninterrupted run traced (batched products round differently with other batch-mates).
        for batch in windows(sorted(window, key=lambda item: len(item[2])), batch_size):
            traced = tracer.trace([ids for _, _, ids in batch])
            for key, tensors in traced.items():
                for (local, _, _), acts in zip(batch, tensors, strict=True):
                    rows[(key, local)] = acts
        appended = 0
        for local, index, ids in window:
            for key, writer in writers.items():
                acts = rows.pop((key, local))
                if local >= held[key]:
                    writer.append_example(index, ids, acts.numpy())
            if local >= skip:
                appended += 1
                counts.new_tokens += len(ids)
        counts.new_examples += appended
        if on_window is not None:
            on_window(appended, counts.new_tokens)
    counts.seconds = time.monotonic() - start_time
    return counts
