"""Causal agreement of matched features: effect correlation with an interval, top-k overlap."""

from __future__ import annotations

import numpy as np

from scircuits.platform.compare.causal_agreement import (
    effect_correlation,
    exact_effects,
    ranked_ids,
    top_k_overlap,
)


def features(ids, effects):
    return [
        {"id": i, "rank": r + 1, "exact_logprob_delta": e}
        for r, (i, e) in enumerate(zip(ids, effects, strict=True))
    ]


def test_matched_effects_correlate_and_the_interval_contains_the_estimate():
    rng = np.random.default_rng(0)
    effects = rng.normal(size=20)
    fa = features(list(range(20)), effects)
    fb = features([100 + i for i in range(20)], effects * 2 + rng.normal(scale=0.1, size=20))
    fb.append({"id": 999, "rank": 21, "exact_logprob_delta": None})
    match_a, match_b = np.arange(25), np.arange(25) + 100  # ids 20..24 have no effect on either side
    result = effect_correlation(match_a, match_b, exact_effects(fa), exact_effects(fb))
    assert result.n_pairs == 20 and result.pearson > 0.95
    assert result.ci[0] <= result.pearson <= result.ci[1]


def test_too_few_pairs_give_no_correlation():
    result = effect_correlation(np.array([1, 2]), np.array([1, 2]), {1: 0.1, 2: 0.2}, {1: 0.3, 2: 0.1})
    assert result.n_pairs == 2 and result.pearson is None and result.ci is None


def test_top_k_overlap_counts_matches_inside_the_other_top_k():
    fa = features([5, 3, 9, 1], [0.0] * 4)
    fb = features([50, 30, 70, 10], [0.0] * 4)
    match_a, match_b = np.array([5, 3, 9, 1]), np.array([50, 70, 30, 11])
    overlap = top_k_overlap(match_a, match_b, ranked_ids(fa), ranked_ids(fb), k=2, d_b=100)
    # top-2 of A = {5, 3}; their matches 50 (in B's top-2) and 70 (not)
    assert overlap.matched_in_top_k == 1 and overlap.expected_by_chance == 4 / 100
    assert top_k_overlap(match_a, match_b, ranked_ids(fa), ranked_ids(fb), k=3, d_b=100).matched_in_top_k == 3
