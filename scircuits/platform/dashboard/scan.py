"""One streaming pass over the activation store through the SAE, and a second one for context windows.

Pass 1 encodes the store in blocks of rows and keeps, per latent: how often it fires, the sum and
maximum of its activations, a histogram of its nonzero activations on fixed log-spaced bins, its
``n_top`` largest activations (row and value), and a uniform sample of ``reservoir`` of its nonzero
activations (the rows with the smallest random keys). Memory is O(d_sae x (bins + n_top +
reservoir)) plus one block; a tokens x latents matrix is never held.

Pass 2 encodes only the rows inside the chosen contexts' windows and gathers each context's latent
activation over its window. Positions before ``first_position`` (the run's edited positions start
there; the first token's activations dwarf the rest) are left out of everything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# Histogram bins: 10 per decade over [1e-4, 1e4), plus one bin below and one above.
HIST_LOG10_MIN = -4.0
HIST_BINS_PER_DECADE = 10
HIST_DECADES = 8
N_HIST = HIST_DECADES * HIST_BINS_PER_DECADE + 2


def hist_bin_edges() -> np.ndarray:
    """Edges of the inner bins (log-spaced); bin 0 holds (0, 1e-4), the last bin [1e4, inf)."""
    return 10.0 ** (
        HIST_LOG10_MIN + np.arange(HIST_DECADES * HIST_BINS_PER_DECADE + 1) / HIST_BINS_PER_DECADE
    )


@dataclass
class ScanSettings:
    n_top: int = 8
    n_quantiles: int = 4
    per_quantile: int = 2
    reservoir: int = 64
    before: int = 20
    after: int = 6
    block_rows: int | None = None  # default: about 16M latent activations per block
    seed: int = 0

    def rows_per_block(self, d_sae: int) -> int:
        return self.block_rows or max(256, min(8192, (1 << 24) // max(d_sae, 1)))


class SmallestKeys:
    """Per latent, the ``k`` entries (row, value) offered so far with the smallest keys."""

    def __init__(self, d_sae: int, k: int) -> None:
        self.k = k
        self.keys = np.full((d_sae, k), np.inf)
        self.rows = np.full((d_sae, k), -1, dtype=np.int64)
        self.values = np.zeros((d_sae, k), dtype=np.float32)

    def offer(self, latent: np.ndarray, rows: np.ndarray, values: np.ndarray, keys: np.ndarray) -> None:
        # A new entry can only enter a full set with a key below its largest key.
        fits = keys < self.keys.max(axis=1)[latent]
        if not fits.any():
            return
        latent, rows, values, keys = latent[fits], rows[fits], values[fits], keys[fits]
        touched = np.unique(latent)
        held_index, held_slot = np.nonzero(np.isfinite(self.keys[touched]))
        held_latent = touched[held_index]
        latent = np.concatenate([held_latent, latent])
        keys = np.concatenate([self.keys[held_latent, held_slot], keys])
        rows = np.concatenate([self.rows[held_latent, held_slot], rows])
        values = np.concatenate([self.values[held_latent, held_slot], values])
        order = np.lexsort((keys, latent))
        latent, keys, rows, values = latent[order], keys[order], rows[order], values[order]
        starts = np.flatnonzero(np.r_[True, latent[1:] != latent[:-1]])
        rank = np.arange(latent.size) - np.repeat(starts, np.diff(np.r_[starts, latent.size]))
        keep = rank < self.k
        latent, rank = latent[keep], rank[keep]
        self.keys[touched] = np.inf
        self.rows[touched] = -1
        self.keys[latent, rank] = keys[keep]
        self.rows[latent, rank] = rows[keep]
        self.values[latent, rank] = values[keep]

    def entries(self, latent: int) -> list[tuple[int, float]]:
        """(row, value) in key order."""
        held = np.isfinite(self.keys[latent])
        order = np.argsort(self.keys[latent, held], kind="stable")
        rows, values = self.rows[latent, held][order], self.values[latent, held][order]
        return [(int(r), float(v)) for r, v in zip(rows, values, strict=True)]


@dataclass
class Scan:
    """Pass-1 totals per latent (numpy throughout: torch's column reductions are far slower here)."""

    d_sae: int
    n_top: int
    reservoir: int
    n_tokens: int = 0  # tokens counted (positions >= first_position)
    counts: np.ndarray = field(init=False)
    sums: np.ndarray = field(init=False)
    maxes: np.ndarray = field(init=False)
    hist: np.ndarray = field(init=False)
    largest: SmallestKeys = field(init=False)  # keyed by -activation
    sampled: SmallestKeys = field(init=False)  # keyed by a uniform random number: a uniform sample

    def __post_init__(self) -> None:
        self.counts = np.zeros(self.d_sae, dtype=np.int64)
        self.sums = np.zeros(self.d_sae, dtype=np.float64)
        self.maxes = np.zeros(self.d_sae, dtype=np.float32)
        self.hist = np.zeros((self.d_sae, N_HIST), dtype=np.int64)
        self.largest = SmallestKeys(self.d_sae, self.n_top)
        self.sampled = SmallestKeys(self.d_sae, self.reservoir)

    def add(self, f: np.ndarray, first_row: int, rng: np.random.Generator) -> None:
        """Fold in a block of latent activations ``f`` (rows, d_sae) whose first row is ``first_row``."""
        f = np.asarray(f, dtype=np.float32)
        self.n_tokens += f.shape[0]
        fired = f > 0
        self.counts += np.count_nonzero(fired, axis=0)
        self.sums += f.sum(0, dtype=np.float64)
        self.maxes = np.maximum(self.maxes, f.max(0, initial=0.0))
        row_idx, latent = np.nonzero(fired)
        if row_idx.size == 0:
            return
        vals = f[row_idx, latent]
        bins = np.clip(
            np.floor((np.log10(vals) - HIST_LOG10_MIN) * HIST_BINS_PER_DECADE).astype(np.int64) + 1,
            0,
            N_HIST - 1,
        )
        np.add.at(self.hist, (latent, bins), 1)
        rows = row_idx + first_row
        self.largest.offer(latent, rows, vals, -vals.astype(np.float64))
        self.sampled.offer(latent, rows, vals, rng.random(row_idx.size))

    def top(self, latent: int) -> list[tuple[int, float]]:
        """(row, activation) of the largest activations, largest first."""
        return self.largest.entries(latent)

    def sample(self, latent: int) -> list[tuple[int, float]]:
        """(row, activation) of the uniform sample of nonzero activations, by activation ascending."""
        return sorted(self.sampled.entries(latent), key=lambda e: e[1])


def encode_block(sae: torch.nn.Module, acts: np.ndarray) -> torch.Tensor:
    import torch

    with torch.no_grad():
        return sae.encode(torch.from_numpy(acts).to(sae.W_dec.dtype)).float()


def scan_store(
    sae: torch.nn.Module,
    read_rows: Callable[[int, int], np.ndarray],
    positions: np.ndarray,
    n_tokens: int,
    first_position: int,
    settings: ScanSettings,
    on_block: Callable[[int], None] | None = None,
) -> Scan:
    """Pass 1 over rows [0, n_tokens)."""
    scan = Scan(int(sae.W_dec.shape[0]), settings.n_top, settings.reservoir)
    rng = np.random.default_rng([settings.seed, 14])
    step = settings.rows_per_block(scan.d_sae)
    for start in range(0, n_tokens, step):
        stop = min(start + step, n_tokens)
        left_out = positions[start:stop] < first_position
        f = encode_block(sae, read_rows(start, stop)).numpy()
        f[left_out] = 0.0
        scan.add(f, start, rng)
        scan.n_tokens -= int(left_out.sum())
        if on_block is not None:
            on_block(stop - start)
    return scan


@dataclass
class Window:
    """A context: rows [lo, hi) of one example around ``row``, and the latent's activation on each."""

    latent: int
    row: int
    lo: int
    hi: int
    values: np.ndarray | None = None


@dataclass
class Runs:
    """The store's rows grouped into runs of equal example id (one run per traced sequence)."""

    starts: np.ndarray  # first row of each run
    ends: np.ndarray  # one past its last row
    of_row: np.ndarray  # run index of each row

    @classmethod
    def of(cls, example_ids: np.ndarray) -> Runs:
        n = example_ids.size
        starts = np.flatnonzero(np.r_[True, example_ids[1:] != example_ids[:-1]]) if n else np.zeros(0, int)
        return cls(starts, np.r_[starts[1:], n], np.searchsorted(starts, np.arange(n), side="right") - 1)


def make_windows(requests: Sequence[tuple[int, int]], runs: Runs, settings: ScanSettings) -> list[Window]:
    """A window of ``before`` tokens before and ``after`` after each (latent, row), inside its example."""
    windows = []
    for latent, row in requests:
        run = runs.of_row[row]
        lo = max(int(runs.starts[run]), row - settings.before)
        windows.append(Window(latent, row, lo, min(int(runs.ends[run]), row + settings.after + 1)))
    return windows


def fill_windows(
    sae: torch.nn.Module,
    read_rows: Callable[[int, int], np.ndarray],
    windows: list[Window],
    block_rows: int,
    left_out: np.ndarray | None = None,
) -> None:
    """Pass 2: each window's latent activations, encoding only the rows some window covers.

    Rows where ``left_out`` (a per-row mask) is true get 0, as in pass 1.
    """
    if not windows:
        return
    lengths = np.array([w.hi - w.lo for w in windows])
    rows = np.concatenate([np.arange(w.lo, w.hi) for w in windows])
    latents = np.repeat(np.array([w.latent for w in windows]), lengths)
    values = np.zeros(rows.size, dtype=np.float32)
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    cursor = 0
    while cursor < order.size:
        start = int(sorted_rows[cursor])
        stop_at = int(np.searchsorted(sorted_rows, start + block_rows, side="left"))
        cells = order[cursor:stop_at]
        block = read_rows(start, int(sorted_rows[stop_at - 1]) + 1)
        needed, local = np.unique(rows[cells] - start, return_inverse=True)
        f = encode_block(sae, block[needed])
        values[cells] = f[local, latents[cells]].numpy()
        if left_out is not None:
            values[cells[left_out[rows[cells]]]] = 0.0
        cursor = stop_at
    offsets = np.r_[0, np.cumsum(lengths)]
    for i, window in enumerate(windows):
        window.values = values[offsets[i] : offsets[i + 1]]
