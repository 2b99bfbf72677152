"""Paired difference, permutation p-value, Holm: exact values, calibration under the null, and a
case where unmatched controls would call an effect significant and matched controls do not."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from scircuits.platform.causal.controls import sample_matched_controls, sample_unmatched_controls
from scircuits.platform.causal.significance import (
    holm,
    min_draws,
    normal_p_value,
    paired_difference,
    permutation_p_value,
    top_k_significance,
)
from scircuits.platform.causal.statistics import Bootstrap


def test_holm_exact():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])


def test_permutation_p_value_exact_for_each_alternative():
    controls = [-0.5, -1.2, 1.5, -0.2]
    assert permutation_p_value(-1.0, controls) == pytest.approx(3 / 5)
    assert permutation_p_value(-1.0, controls, "less") == pytest.approx(2 / 5)
    assert permutation_p_value(-1.0, controls, "greater") == pytest.approx(4 / 5)
    assert permutation_p_value(-9.0, controls) == pytest.approx(1 / 5)  # the +1 correction: never 0
    with pytest.raises(ValueError):
        permutation_p_value(0.0, [])


def test_paired_difference_cancels_what_the_examples_share():
    rng = np.random.default_rng(0)
    example = rng.normal(0, 3, size=50)  # each example's own difficulty, shared by every condition
    controls = example + rng.normal(0, 0.1, size=(8, 50))
    top = controls.mean(axis=0) - 0.25
    difference = paired_difference(top, controls, Bootstrap(50, 300, seed=1))
    assert (difference.mean, difference.low, difference.high) == pytest.approx((-0.25, -0.25, -0.25))
    assert difference.excludes_zero and difference.n_replicates == 300


def test_top_k_three_figures_exact():
    n = 30
    rng = np.random.default_rng(2)
    controls_1 = rng.normal(-0.1, 0.01, size=(99, n))
    controls_5 = rng.normal(0.0, 0.05, size=(99, n))
    top_1 = np.full(n, -1.0)  # far beyond every control: p = 1/100
    top_5 = controls_5[0].copy()  # one more control set
    result = top_k_significance({1: (top_1, controls_1), 5: (top_5, controls_5)}, Bootstrap(n, 200, seed=0))
    t1, t5 = result.by_k()[1], result.by_k()[5]
    assert t1.p_value == pytest.approx(1 / 100) and t1.p_holm == pytest.approx(2 / 100)
    expected_5 = (1 + np.sum(np.abs(controls_5.mean(axis=1)) >= abs(top_5.mean()))) / 100
    assert t5.p_value == pytest.approx(expected_5)
    assert t5.p_holm == pytest.approx(max(2 / 100, expected_5))
    assert t1.significant and t1.difference.high < 0
    assert not t5.significant
    assert result.attainable and result.n_controls == 99


def test_below_min_draws_the_call_rests_on_the_normal_prediction_p():
    assert min_draws(4) == 80 and min_draws(1) == 20
    n = 20
    rng = np.random.default_rng(0)
    controls = rng.normal(0, 0.01, size=(20, n))
    effects = {k: (np.full(n, -5.0), controls) for k in (1, 5, 20, 50)}
    result = top_k_significance(effects, Bootstrap(n, 100, seed=0))
    # exact p is 1/21 at best; Holm x 4 could never pass 0.05, so the normal fit decides
    assert result.basis == "normal" and result.attainable and "normal fit" in result.method
    means = controls.mean(axis=1)
    t = (-5.0 - means.mean()) / (means.std(ddof=1) * np.sqrt(1 + 1 / 20))
    expected = 2 * stats.t(df=19).sf(abs(t))
    for test in result.tests:
        assert test.p_value == pytest.approx(1 / 21) and test.basis == "normal"
        assert test.p_normal == pytest.approx(expected, rel=1e-9)
        assert test.p_holm == pytest.approx(min(1.0, 4 * expected), rel=1e-9)
        assert test.significant


def test_the_normal_call_needs_the_top_set_beyond_every_control():
    """A heavy-tailed control law: one control set as extreme as the top set. The normal fit says
    p is small; the controls themselves say otherwise, and no call is made."""
    n = 20
    base = np.random.default_rng(1).normal(0, 0.01, size=(20, n))
    controls = base.copy()
    controls[3] -= 3.0  # one control set moves the score as much as the top set
    effects = {k: (np.full(n, -3.0), controls) for k in (1, 5, 20, 50)}
    result = top_k_significance(effects, Bootstrap(n, 100, seed=0))
    for test in result.tests:
        assert test.p_value == pytest.approx(2 / 21)
        assert test.difference.excludes_zero
        assert not test.significant


def test_normal_p_value_exact_and_alternatives():
    controls = [-0.1, 0.0, 0.1, 0.2]
    mean, sd = 0.05, np.std(controls, ddof=1) * np.sqrt(1 + 1 / 4)
    t = (-0.5 - mean) / sd
    assert normal_p_value(-0.5, controls) == pytest.approx(2 * stats.t(df=3).sf(abs(t)))
    assert normal_p_value(-0.5, controls, "less") == pytest.approx(stats.t(df=3).cdf(t))
    assert normal_p_value(-0.5, controls, "greater") == pytest.approx(stats.t(df=3).sf(t))
    assert normal_p_value(1.0, [0.5]) is None
    assert normal_p_value(1.0, [0.5, 0.5]) == 0.0 and normal_p_value(0.5, [0.5, 0.5]) == 1.0


def null_study(set_spread: float, seed: int, trials: int = 400, n: int = 40, draws: int = 39):
    """p-values, interval exclusions of 0 and significant calls when the top set is one more draw
    from the controls' law. ``set_spread``: how much a whole set's effect varies from set to set."""
    rng = np.random.default_rng(seed)
    p_values, interval_hits, calls = [], 0, 0
    for trial in range(trials):
        example = rng.normal(0, 1, size=n)  # shared by every set on that example
        sets = example + rng.normal(0, 0.5, (draws + 1, n)) + rng.normal(0, set_spread, (draws + 1, 1))
        (test,) = top_k_significance({1: (sets[0], sets[1:])}, Bootstrap(n, 200, seed=trial)).tests
        p_values.append(test.p_value)
        interval_hits += test.difference.excludes_zero
        calls += test.significant
    return np.array(p_values), interval_hits / trials, calls / trials


@pytest.mark.parametrize("set_spread", [0.0, 0.1])
def test_p_values_are_uniform_under_the_null(set_spread):
    p, _, calls = null_study(set_spread, seed=11)
    for quantile in (0.05, 0.25, 0.5, 0.75):  # P(p <= j/40) = j/40 exactly
        assert abs((p <= quantile).mean() - quantile) < 0.07, quantile
    assert calls < 0.08


def test_the_normal_basis_makes_few_calls_under_the_null():
    """Four k values, R = 20 (the default): the top sets are one more draw from the controls' law;
    calls (normal basis, Holm across the four) stay at or under the 5% level."""
    rng = np.random.default_rng(21)
    trials, n, draws, calls = 300, 40, 20, 0
    for trial in range(trials):
        effects = {}
        for k in (1, 5, 20, 50):
            example = rng.normal(0, 1, size=n)
            sets = example + rng.normal(0, 0.5, (draws + 1, n)) + rng.normal(0, 0.1, (draws + 1, 1))
            effects[k] = (sets[0], sets[1:])
        result = top_k_significance(effects, Bootstrap(n, 100, seed=trial))
        assert result.basis == "normal"
        calls += any(t.significant for t in result.tests)
    assert calls / trials < 0.06


def test_the_interval_alone_is_calibrated_only_when_sets_do_not_differ():
    """Resampling examples cannot see set-to-set variation: with it, the paired interval excludes 0
    far more often than 5% under the null. That is why "significant" also needs the permutation p."""
    _, hits_without, _ = null_study(0.0, seed=12)
    _, hits_with, calls_with = null_study(0.1, seed=12)
    assert hits_without < 0.1
    assert hits_with > 0.15
    assert calls_with < 0.08


def effect_universe(seed: int):
    """Features whose ablation effect on each example is proportional to their ablation size.

    Features 0-4 (the top) and 5-59 fire often with large sizes; 60-459 fire rarely with small
    sizes, on a few examples. A set's effect on an example is minus the sum of its members' sizes
    there (scaled), plus noise: the top set is no more important than a matched set of its size.
    """
    rng = np.random.default_rng(seed)
    n_examples, d_sae = 60, 460
    frequency = np.concatenate([rng.uniform(0.1, 0.25, 60), rng.uniform(0.0005, 0.002, 400)])
    per_example = np.zeros((n_examples, d_sae))
    per_example[:, :60] = rng.uniform(0.5, 1.5, (n_examples, 60)) * frequency[:60] * 10
    rare_examples = rng.random((n_examples, 400)) < 0.05
    per_example[:, 60:] = rare_examples * frequency[60:] * 10
    activity = per_example > 0
    size = per_example.sum(axis=0)
    noise = rng.normal(0, 0.05, size=n_examples)

    def effect(features: list[int]) -> np.ndarray:
        return -per_example[:, features].sum(axis=1) + noise + rng.normal(0, 0.05, n_examples)

    return frequency, size, activity, effect


def test_unmatched_controls_call_an_effect_that_matched_controls_do_not():
    frequency, size, activity, effect = effect_universe(seed=4)
    top = [0, 1, 2, 3, 4]
    n = activity.shape[0]
    bootstrap = Bootstrap(n, 500, seed=0)
    top_effect = effect(top)

    unmatched = sample_unmatched_controls(top, frequency > 0, draws=99, rng=1)
    loose = top_k_significance({5: (top_effect, np.array([effect(s) for s in unmatched]))}, bootstrap)
    assert loose.tests[0].significant  # rare features do nothing: the top set looks special

    matched = sample_matched_controls(top, frequency, size, activity, draws=99, rng=1)
    assert not matched.widened
    tight = top_k_significance({5: (top_effect, np.array([effect(s) for s in matched.ids]))}, bootstrap)
    assert not tight.tests[0].significant
    assert tight.tests[0].p_value > 0.2
