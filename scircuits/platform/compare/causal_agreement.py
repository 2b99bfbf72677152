"""Do matched features matter alike? Agreement of two runs' causal results on matched pairs.

Inputs are each run's ``causal/results.json`` feature records: ``id``, ``rank`` (by the run's
ranking) and ``exact_logprob_delta`` (the exact effect of ablating that one feature, present for the
run's top ``exact_top`` features).

- ``effect_correlation``: Pearson correlation of the exact effects of the matched pairs where both
  features have one, with a percentile bootstrap interval over pairs.
- ``top_k_overlap``: how many of A's top-k features have their match among B's top-k, with the count
  expected by chance (k * k / d_sae_B for a uniformly random match).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class EffectCorrelation:
    n_pairs: int
    pearson: float | None
    ci: tuple[float, float] | None
    pairs: list[tuple[int, int, float, float]]  # (a, b, effect_a, effect_b)


@dataclass
class TopKOverlap:
    k: int
    matched_in_top_k: int
    expected_by_chance: float


def exact_effects(features: Sequence[Mapping[str, Any]]) -> dict[int, float]:
    return {
        int(f["id"]): float(f["exact_logprob_delta"])
        for f in features
        if f.get("exact_logprob_delta") is not None
    }


def ranked_ids(features: Sequence[Mapping[str, Any]]) -> list[int]:
    return [int(f["id"]) for f in sorted(features, key=lambda f: f.get("rank", 0))]


def effect_correlation(
    match_a: np.ndarray,
    match_b: np.ndarray,
    effects_a: Mapping[int, float],
    effects_b: Mapping[int, float],
    n_boot: int = 2000,
    seed: int = 0,
) -> EffectCorrelation:
    pairs = [
        (int(a), int(b), effects_a[int(a)], effects_b[int(b)])
        for a, b in zip(match_a, match_b, strict=True)
        if int(a) in effects_a and int(b) in effects_b
    ]
    if len(pairs) < 3:
        return EffectCorrelation(len(pairs), None, None, pairs)
    x = np.array([p[2] for p in pairs])
    y = np.array([p[3] for p in pairs])
    if x.std() == 0 or y.std() == 0:
        return EffectCorrelation(len(pairs), None, None, pairs)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(x), len(x))
        if x[idx].std() > 0 and y[idx].std() > 0:
            boots.append(np.corrcoef(x[idx], y[idx])[0, 1])
    ci = (float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))) if boots else None
    return EffectCorrelation(len(pairs), float(np.corrcoef(x, y)[0, 1]), ci, pairs)


def top_k_overlap(
    match_a: np.ndarray,
    match_b: np.ndarray,
    ranked_a: Sequence[int],
    ranked_b: Sequence[int],
    k: int,
    d_b: int,
) -> TopKOverlap:
    """Of A's top-k features, how many are matched to one of B's top-k (one-to-one matches)."""
    partner = dict(zip(match_a.tolist(), match_b.tolist(), strict=True))
    top_b = set(ranked_b[:k])
    top_a = ranked_a[:k]
    hits = sum(1 for a in top_a if partner.get(a) in top_b)
    k_eff = min(k, len(top_a), len(top_b))
    return TopKOverlap(k, hits, k_eff * k_eff / max(d_b, 1))
