"""Bootstrap intervals (known answers, coverage, determinism) and Spearman correlation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from scircuits.platform.causal.statistics import Bootstrap, Interval, spearman, spearman_interval
from scircuits.platform.groundtruth.scoring import auroc


def test_constant_effect_has_a_zero_width_interval_at_its_value():
    interval = Bootstrap(50, 200, seed=1).interval(np.full(50, -0.25))
    assert (interval.mean, interval.low, interval.high) == pytest.approx((-0.25, -0.25, -0.25))


def test_interval_matches_the_normal_approximation_of_the_mean():
    rng = np.random.default_rng(0)
    values = rng.normal(1.0, 2.0, size=400)
    interval = Bootstrap(400, 2000, seed=0).interval(values)
    half_width = 1.96 * values.std(ddof=1) / np.sqrt(400)
    assert interval.mean == pytest.approx(values.mean())
    assert (interval.high - interval.low) / 2 == pytest.approx(half_width, rel=0.1)
    assert interval.low < values.mean() < interval.high


def test_coverage_is_close_to_95_percent():
    rng = np.random.default_rng(123)
    n, trials, covered = 60, 300, 0
    for t in range(trials):
        values = rng.exponential(1.0, size=n)  # true mean 1, skewed
        interval = Bootstrap(n, 400, seed=t).interval(values)
        covered += interval.low <= 1.0 <= interval.high
    assert 0.88 <= covered / trials <= 0.99


def test_same_seed_same_interval_and_paired_replicates():
    values = np.random.default_rng(5).normal(size=30)
    a, b = Bootstrap(30, 300, seed=7), Bootstrap(30, 300, seed=7)
    assert a.interval(values) == b.interval(values)
    assert np.array_equal(a.indices, b.indices)
    assert Bootstrap(30, 300, seed=8).interval(values) != a.interval(values)


def test_paired_differences_are_tighter_than_unpaired_intervals():
    rng = np.random.default_rng(2)
    base = rng.normal(0, 5, size=200)  # large per-example variation, shared by both conditions
    ablated = base - 0.5 + rng.normal(0, 0.1, size=200)
    boot = Bootstrap(200, 1000, seed=0)
    diff = boot.interval(ablated - base)
    assert diff.high < 0  # the paired effect is clearly negative
    assert boot.interval(ablated).excludes(boot.interval(base)) is False  # unpaired intervals overlap


def test_wrong_number_of_values_is_refused():
    with pytest.raises(ValueError):
        Bootstrap(10, 10).interval(np.zeros(9))


def test_interval_exclusion():
    assert Interval(0, -3, -2).excludes(Interval(0, -1, 0))
    assert not Interval(0, -3, -0.5).excludes(Interval(0, -1, 0))


def test_tied_values_share_their_average_rank():
    # ranks [2, 3.5, 3.5, 1] against [1, 2, 3, 4]: Pearson of the ranks, worked by hand
    a, b = np.array([10, 20, 20, 5]), np.array([1, 2, 3, 4])
    ra, rb = np.array([2, 3.5, 3.5, 1]) - 2.5, np.array([1, 2, 3, 4]) - 2.5
    assert spearman(a, b) == pytest.approx((ra * rb).sum() / np.sqrt((ra**2).sum() * (rb**2).sum()))
    # AUROC counts a positive tied with a negative as half: positives {1, 2}, negatives {1, 0}
    assert auroc(np.array([1.0, 2.0, 1.0, 0.0]), np.array([True, True, False, False])) == pytest.approx(
        (0.5 + 1 + 1 + 1) / 4
    )


def test_spearman_and_its_interval_equal_scipy_spearmanr_with_many_ties():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 4, 40).astype(float)
    b = a + rng.integers(0, 3, 40)
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    # the interval: the same replicates (one index draw each, in order) through spearmanr
    draws = np.random.default_rng(7)
    rhos = []
    for _ in range(200):
        pick = draws.integers(0, 40, size=40)
        if len(set(a[pick])) > 1 and len(set(b[pick])) > 1:
            rhos.append(spearmanr(a[pick], b[pick]).statistic)
    expected = np.quantile(rhos, [0.025, 0.975])
    assert spearman_interval(a, b, replicates=200, seed=7) == pytest.approx(expected.tolist(), abs=1e-12)


def test_spearman_known_values():
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1])) == pytest.approx(-1.0)
    # monotone but non-linear: still 1
    assert spearman(np.array([1, 2, 3, 4, 5]), np.exp(np.arange(5.0))) == pytest.approx(1.0)
    # sum of squared rank differences 4 over n=5: 1 - 6*4/(5*24) = 0.8
    assert spearman(np.array([1, 2, 3, 4, 5]), np.array([2, 1, 4, 3, 5])) == pytest.approx(0.8)
    assert spearman(np.array([1.0]), np.array([2.0])) is None
    assert spearman(np.array([1, 1, 1]), np.array([1, 2, 3])) is None
