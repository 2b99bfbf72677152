"""Statistics of per-example effects: seeded paired bootstrap intervals, rank correlation, effects of
a condition against a reference, random control draws.

Every condition is scored on the same examples, so effects are paired: the bootstrap resamples
examples (one index set per replicate, shared by every condition of a run), never tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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

    def ratio_interval(self, kept: np.ndarray, empty: np.ndarray, full: np.ndarray) -> list[float] | None:
        """Percentile interval of (mean kept − mean empty) / (mean full − mean empty), the three
        per-example arrays resampled together; None when a replicate's denominator is 0."""
        kept, empty, full = (
            np.asarray(v, dtype=np.float64)[self.indices].mean(axis=1) for v in (kept, empty, full)
        )
        denominator = full - empty
        if np.any(denominator == 0):
            return None
        tail = (1.0 - self.level) / 2.0
        low, high = np.quantile((kept - empty) / denominator, [tail, 1.0 - tail])
        return [float(low), float(high)]


def _rank_correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's ρ of each row pair of ``a`` and ``b`` (R, n): the Pearson correlation of their
    ranks (ties share their average rank, ``scipy.stats.rankdata``); NaN where a row is constant."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a, axis=1), rankdata(b, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denom = np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (ra * rb).sum(axis=1) / denom, np.nan)


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation; None when it is undefined (fewer than 2 values or a constant)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("spearman needs two sequences of the same length")
    if len(a) < 2:
        return None
    rho = float(_rank_correlations(a[None], b[None])[0])
    return None if np.isnan(rho) else rho


def spearman_interval(
    a: np.ndarray, b: np.ndarray, replicates: int = 1000, seed: int = 0, level: float = 0.95
) -> list[float] | None:
    """Percentile bootstrap interval of Spearman's ρ, resampling the (a_i, b_i) pairs; None when
    fewer than 3 pairs or when too few replicates are defined."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 3:
        return None
    rng = np.random.default_rng(seed)
    picks = np.stack([rng.integers(0, len(a), size=len(a)) for _ in range(replicates)])
    rhos = _rank_correlations(a[picks], b[picks])
    values = rhos[~np.isnan(rhos)]
    if len(values) < replicates // 2:
        return None
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return [float(low), float(high)]


# ----------------------------------------------------------------------------- effects of conditions


def effect(bootstrap: Bootstrap, scores: Any, reference: Any) -> dict[str, Any]:
    """Mean per-example change of accuracy and gold log-prob of ``scores`` versus ``reference``
    (two ``ConditionScores``), with paired bootstrap intervals."""
    acc = bootstrap.interval(scores.correct.astype(float) - reference.correct.astype(float))
    lp = bootstrap.interval(scores.logprob - reference.logprob)
    return {
        "accuracy_delta": acc.mean,
        "accuracy_ci": acc.as_list(),
        "logprob_delta": lp.mean,
        "logprob_ci": lp.as_list(),
    }


def control_effect(bootstrap: Bootstrap, draws: Sequence[Any], reference: Any) -> dict[str, Any]:
    """Effect of the mean over the control draws, per example (paired with the reference)."""
    acc = np.mean([d.correct.astype(float) for d in draws], axis=0) - reference.correct.astype(float)
    lp = np.mean([d.logprob for d in draws], axis=0) - reference.logprob
    a, lpi = bootstrap.interval(acc), bootstrap.interval(lp)
    return {
        "accuracy_delta": a.mean,
        "accuracy_ci": a.as_list(),
        "logprob_delta": lpi.mean,
        "logprob_ci": lpi.as_list(),
        "draws": [
            {
                "accuracy_delta": float(d.accuracy - reference.accuracy),
                "logprob_delta": float(d.mean_logprob - reference.mean_logprob),
            }
            for d in draws
        ],
    }


def excludes(a: Sequence[float], b: Sequence[float]) -> bool:
    """True when the intervals [a0, a1] and [b0, b1] do not overlap."""
    return Interval(0, a[0], a[1]).excludes(Interval(0, b[0], b[1]))


def control_draws(
    k: int, ranked_top: Sequence[int], active: np.ndarray, draws: int, seed: int
) -> list[list[int]]:
    """``draws`` sets of k features among the active ones outside the top k (seeded by seed and k)."""
    top = set(int(i) for i in ranked_top[:k])
    pool = [int(i) for i in np.flatnonzero(active) if int(i) not in top]
    if len(pool) < k:
        pool = [i for i in range(len(active)) if i not in top]
    rng = np.random.default_rng([seed, k])
    return [
        sorted(int(i) for i in rng.choice(pool, size=min(k, len(pool)), replace=False)) for _ in range(draws)
    ]


def derived_seed(*parts: int) -> int:
    """A deterministic 31-bit seed from integers (Python's hash() of strings changes per process)."""
    return int(np.random.SeedSequence([p % (1 << 32) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


FEW_EXAMPLES = 10  # evaluation examples below which a study or a circuit warns that its intervals mean little


def selection_split(
    n_examples: int, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    """Seeded disjoint (selection, evaluation) example indices, selection ≈ ``fraction`` of them;
    (None, None) when ``fraction`` is 0 or there are fewer than 2 examples (rank and measure on all)."""
    if fraction <= 0 or n_examples < 2:
        return None, None
    order = np.random.default_rng(derived_seed(seed, 4241)).permutation(n_examples)
    n_selection = min(max(round(fraction * n_examples), 1), n_examples - 1)
    return np.sort(order[:n_selection]), np.sort(order[n_selection:])
