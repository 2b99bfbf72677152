"""Matched control sampling: exact matches on constructed features, widening, overlap, draws without
replacement within a k, the study's own top features excluded, balanced ratios, failures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scircuits.platform.causal.controls import (
    DEFAULT_DRAWS,
    MEDIAN_RANGE,
    ControlSamplingError,
    ablation_size,
    excluded_features,
    sample_matched_controls,
    sample_unmatched_controls,
)


def universe(n_examples: int = 10):
    """Features 0, 1 are the top; 2 matches 0, 3 matches 1; the rest are off on some axis."""
    frequency = np.array([0.20, 0.05, 0.15, 0.08, 0.001, 0.20, 0.90, 0.0])
    size = np.array([100.0, 10.0, 60.0, 15.0, 0.5, 900.0, 100.0, 0.0])
    activity = np.ones((n_examples, 8), dtype=bool)
    activity[:, 7] = False  # never fires
    activity[1:, 4] = False  # rare: one example only
    return frequency, size, activity


def test_each_control_is_the_only_feature_matched_on_frequency_and_size():
    frequency, size, activity = universe()
    controls = sample_matched_controls([0, 1], frequency, size, activity, draws=1, rng=0)
    assert controls.ids == [[2, 3]]
    first = controls.sets[0].matches
    assert [(m.top, m.control, m.band) for m in first] == [(0, 2, 2.0), (1, 3, 2.0)]
    assert first[0].frequency_ratio == pytest.approx(0.75) and first[0].size_ratio == pytest.approx(0.6)
    assert controls.widened == 0


def test_draws_of_one_k_take_fresh_features_first_and_never_repeat_one_within_a_set():
    """Fresh features while one stands within the first bands (0.5-4x); past them a matched feature
    already drawn for this k by another set is reused rather than one outside the bands; never twice
    within a set."""
    frequency, size, activity = universe()
    size[5] = size[2]  # a second feature matched to top feature 0 in the 2x band
    frequency[5] = frequency[2]
    controls = sample_matched_controls([0, 1], frequency, size, activity, draws=3, rng=0)
    firsts = [ids[0] for ids in controls.ids]
    assert sorted(set(firsts[:2])) == [2, 5]  # both fresh matched features before any repeat
    assert firsts[2] in (2, 5)  # then a repeat in the band, not a feature outside it
    assert all(len(set(ids)) == 2 and not {0, 1, 7} & set(ids) for ids in controls.ids)
    assert all(m.band == 2.0 for s in controls.sets for m in s.matches)
    # with no fresh matched feature left, the band is kept: the matched ones repeat
    frequency, size, activity = universe()
    repeated = sample_matched_controls([0, 1], frequency, size, activity, draws=2, rng=0)
    assert repeated.ids == [[2, 3], [2, 3]] and repeated.widened == 0


def test_band_widens_step_by_step_and_is_recorded():
    frequency, size, activity = universe()
    size[2] = 30.0  # ratio 0.3 to feature 0: outside 2x and 3x, inside 4x
    controls = sample_matched_controls([0, 1], frequency, size, activity, draws=1, rng=0)
    assert [m.band for m in controls.sets[0].matches] == [4.0, 2.0]
    assert controls.ids == [[2, 3]]
    assert controls.widened == 1


def test_no_candidate_within_any_band_falls_back_to_any_active_feature():
    frequency, size, activity = universe()
    controls = sample_matched_controls([0], frequency, size, activity, draws=6, band=1.01, widen=(), rng=3)
    for control_set in controls.sets:
        (match,) = control_set.matches
        assert match.band is None and match.control not in (0, 7)
    # the fallback draws every active feature outside the top set, each once
    assert sorted(s.features[0] for s in controls.sets) == [1, 2, 3, 4, 5, 6]


def test_controls_must_be_active_on_the_top_features_examples():
    frequency, size, activity = universe()
    activity[:, 2] = False
    activity[0, 2] = True  # feature 2 now fires on 1 of the 10 examples feature 0 fires on
    controls = sample_matched_controls([0, 1], frequency, size, activity, draws=1, rng=0)
    assert controls.sets[0].matches[0].control != 2


def test_the_studys_own_top_features_are_never_controls():
    frequency, size, activity = universe()
    controls = sample_matched_controls([0], frequency, size, activity, draws=3, exclude=[0, 2, 5], rng=0)
    assert controls.excluded == 2  # 0 is the top feature itself
    assert not {0, 2, 5} & {f for ids in controls.ids for f in ids}
    assert excluded_features([9, 8, 7, 6, 5, 4, 3], [1, 2]) == [9, 8, 7, 6]  # 2 x max(k)
    assert excluded_features([9, 8], [5]) == [9, 8]


def power_law_universe(seed: int = 1, d_sae: int = 3000, n_examples: int = 80):
    """Feature frequencies and sizes falling as a power law (many small features, few large ones), as
    in a real SAE; every feature active on most examples."""
    rng = np.random.default_rng(seed)
    frequency = np.clip(rng.pareto(1.0, d_sae) * 0.002 + 1e-4, 1e-4, 0.5)
    size = frequency * rng.lognormal(np.log(100), 0.5, d_sae)
    activity = rng.random((n_examples, d_sae)) < 0.8
    return frequency, size, activity


@pytest.mark.parametrize("k", [1, 5, 20, 50])
def test_median_ratios_are_balanced_at_every_k(k):
    """Top features spread over the larger half of the features, and 2 x k more features excluded
    (the study's own ranking): a uniform draw within the band gives controls smaller than the top
    (the density of features falls with size); the stratified draw keeps both median ratios within
    0.9-1.1 at R = 20, without replacement while matched features last."""
    frequency, size, activity = power_law_universe()
    order = np.argsort(-size)
    top = [int(i) for i in order[100 : 1100 : 1000 // k][:k]]
    others = np.setdiff1d(np.arange(len(size)), top)
    exclude = [int(i) for i in np.random.default_rng(k).choice(others, 2 * k, replace=False)]
    controls = sample_matched_controls(top, frequency, size, activity, exclude=exclude, rng=k)
    members = [f for ids in controls.ids for f in ids]
    assert all(len(set(ids)) == k for ids in controls.ids)  # never a repeat within a set
    # without replacement while matched features last: at k = 50 (1,000 draws from 2,900 features)
    # a few are reused rather than drawn outside the bands
    assert len(set(members)) >= (0.99 if k == 50 else 1.0) * 20 * k
    assert 0.9 <= controls.median_ratio("frequency") <= 1.1
    assert 0.9 <= controls.median_ratio("size") <= 1.1
    # the same universe drawn uniformly within the band: the controls come out smaller
    uniform = uniform_band_medians(top, frequency, size, exclude, draws=20)
    assert uniform < 0.93 and abs(math.log(uniform)) > 2 * abs(math.log(controls.median_ratio("size")))


def uniform_band_medians(top, frequency, size, exclude, draws: int) -> float:
    """Median size ratio of uniform draws within the 2x band (the old sampler, with replacement)."""
    rng = np.random.default_rng(0)
    ratios = []
    for t in top:
        f_ratio, s_ratio = frequency / frequency[t], size / size[t]
        ok = (f_ratio >= 0.5) & (f_ratio <= 2) & (s_ratio >= 0.5) & (s_ratio <= 2)
        ok[list(top) + list(exclude)] = False
        ratios.extend(s_ratio[rng.choice(np.flatnonzero(ok), draws)])
    return float(np.median(ratios))


def test_sets_have_the_top_size_distinct_members_and_never_a_top_feature():
    rng = np.random.default_rng(1)
    d_sae, n_examples = 600, 40
    frequency = rng.uniform(0.001, 0.3, d_sae)
    size = frequency * rng.uniform(50, 150, d_sae)
    activity = rng.random((n_examples, d_sae)) < 0.7
    top = [int(i) for i in np.argsort(-size)[:10]]
    controls = sample_matched_controls(top, frequency, size, activity, rng=5)
    assert len(controls.sets) == DEFAULT_DRAWS == 20
    for features in controls.ids:
        assert len(features) == len(set(features)) == 10
        assert not set(features) & set(top)
    for control_set in controls.sets:
        for m in control_set.matches:
            if m.band is not None:
                assert 1 / m.band <= m.frequency_ratio <= m.band
                assert 1 / m.band <= m.size_ratio <= m.band
    again = sample_matched_controls(top, frequency, size, activity, rng=5)
    assert again.ids == controls.ids and controls.seed == 5


def test_too_few_features_is_an_error_not_a_smaller_set():
    frequency, size, activity = universe()
    with pytest.raises(ControlSamplingError, match="no control feature left"):
        sample_matched_controls([0, 1, 2, 3, 5], frequency, size, activity, draws=1, rng=0)


def test_bad_inputs_are_refused():
    frequency, size, activity = universe()
    with pytest.raises(ValueError, match="distinct"):
        sample_matched_controls([0, 0], frequency, size, activity)
    with pytest.raises(ValueError, match="same features"):
        sample_matched_controls([0], frequency, size[:-1], activity)
    with pytest.raises(ValueError, match="band"):
        sample_matched_controls([0], frequency, size, activity, band=0.5)


def test_ablation_size_and_the_unmatched_draw():
    assert ablation_size(np.array([2.0, 0.0]), np.array([0.5, 3.0])).tolist() == [1.0, 0.0]
    sets = sample_unmatched_controls([0, 1], np.array([1, 1, 1, 0, 1], dtype=bool), draws=50, rng=0)
    assert all(len(s) == 2 and set(s) <= {2, 4} for s in sets)
    assert not math.isnan(sets[0][0])


def test_busiest_top_features_get_a_warning_when_no_larger_peer_is_left():
    """The top features are the largest of the pool: the matched controls can only be smaller, the
    size median falls below 0.9 and ``off_medians`` says so (the study warns with it)."""
    frequency, size, activity = power_law_universe()
    order = [int(i) for i in np.argsort(-size)]
    top, excluded = order[:5], order[5:15]
    controls = sample_matched_controls(top, frequency, size, activity, exclude=excluded, rng=3)
    assert controls.median_ratio("size") < MEDIAN_RANGE[0]
    assert any(w.startswith("size ") for w in controls.off_medians())
    assert controls.distinct == len({f for ids in controls.ids for f in ids})


def test_a_median_off_target_is_warned_about_in_the_cli_summary():
    from scircuits import adjusted_contrast
    from scircuits.plugins.analyses.sweeps import ControlSets, Sweep, Sweeps, SweepsResult, control_warnings

    def sweep(k: int, off: list[str]) -> Sweep:
        sets = ControlSets(
            features=[[9]], bands=[[2.0]], band=2.0, widened=0, min_overlap=0.5, off_medians=off
        )
        return Sweep(
            k=k,
            ablation="zero",
            features=[1],
            accuracy_delta=0.0,
            accuracy_ci=[0.0, 0.0],
            logprob_delta=-1.0,
            logprob_ci=[-1.5, -0.5],
            control=None,
            significant_logprob=None,
            significant_accuracy=None,
            control_sets=sets,
        )

    result = SweepsResult(sweeps=[sweep(1, ["frequency 0.62"]), sweep(5, []), sweep(20, ["size 1.31"])])
    warnings = control_warnings(result)
    assert len(warnings) == 2
    assert "top 1" in warnings[0] and "frequency 0.62" in warnings[0] and "looks larger" in warnings[0]
    assert "top 20" in warnings[1] and "looks smaller" in warnings[1]
    assert not any("adjusted" in w for w in warnings)  # none computed (an older results.json)
    # with the adjusted contrast: its estimate, interval and extrapolation, or why there is none
    top, controls = np.zeros(40) - 1.0, np.zeros((20, 40))
    ratios = np.linspace(-0.7, -0.1, 20)
    from scircuits.platform.causal.statistics import Bootstrap

    result.sweeps[0].adjusted_logprob = adjusted_contrast(
        top, controls + ratios[:, None], ratios, np.sin(ratios), Bootstrap(40, 200)
    )
    result.sweeps[2].adjusted_logprob = adjusted_contrast(
        top, controls, np.full(20, -0.5), ratios, Bootstrap(40, 200)
    )
    warnings = control_warnings(result)
    assert (
        "; adjusted for the ratios (control effect read at ratio 1) top − control Δlogprob -1.000 "
        in (warnings[0])
    )
    assert (
        "-1.000 [-1.000, -1.000] against -0.600 raw, extrapolated (frequency, size, joint: ratio 1 outside"
        in warnings[0]
    )
    assert "; no adjusted contrast (the control sets' ratios do not identify the effect" in warnings[1]
    lines = Sweeps().summary_lines(result)
    assert [line for line in lines if "warning:" in line] == [f"  warning: {w}" for w in warnings]
