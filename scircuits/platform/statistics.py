"""Statistics of per-example effects: seeded paired bootstrap intervals and rank correlation.

Every condition is scored on the same examples, so effects are paired: the bootstrap resamples
examples (one index set per replicate, shared by every condition of a run), never tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def as_list(self) -> list[float]:
        return [self.low, self.high]

    def excludes(self, other: Interval) -> bool:
        """True when the two intervals do not overlap."""
        return self.high < other.low or other.high < self.low


class Bootstrap:
    """Seeded resampling of n examples; the same replicates serve every condition (paired)."""

    def __init__(self, n_examples: int, n_replicates: int = 1000, seed: int = 0, level: float = 0.95) -> None:
        if n_examples < 1:
            raise ValueError("the bootstrap needs at least one example")
        rng = np.random.default_rng(seed)
        self.indices = rng.integers(0, n_examples, size=(n_replicates, n_examples))
        self.n_examples = n_examples
        self.level = level

    def interval(self, values: np.ndarray) -> Interval:
        """Mean of ``values`` (one per example) and its percentile interval."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (self.n_examples,):
            raise ValueError(f"expected {self.n_examples} per-example values, got shape {values.shape}")
        replicate_means = values[self.indices].mean(axis=1)
        tail = (1.0 - self.level) / 2.0
        low, high = np.quantile(replicate_means, [tail, 1.0 - tail])
        return Interval(float(values.mean()), float(low), float(high))


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks starting at 1, ties sharing their average rank."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    result = np.empty(len(values), dtype=np.float64)
    start = 0
    while start < len(values):
        stop = start
        while stop + 1 < len(values) and sorted_values[stop + 1] == sorted_values[start]:
            stop += 1
        result[order[start : stop + 1]] = (start + stop) / 2.0 + 1.0
        start = stop + 1
    return result


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation; None when it is undefined (fewer than 2 values or a constant)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError("spearman needs two sequences of the same length")
    if len(a) < 2:
        return None
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((ra**2).sum() * (rb**2).sum()))
    if denom == 0.0:
        return None
    return float((ra * rb).sum() / denom)
