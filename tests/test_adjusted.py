"""The covariate-adjusted contrast: control effects regressed on the sets' log ratios, read at 1."""

from __future__ import annotations

import numpy as np
import pytest

from scircuits import AdjustedContrast, adjusted_contrast, set_log_ratios
from scircuits.platform.causal.statistics import Bootstrap

N, R = 80, 20
TRUE_CONTRAST = -0.5  # top effect − the control effect at ratio 1
SLOPES = (0.4, 0.3)  # control effect per unit log frequency ratio, per unit log size ratio


def synthetic(
    seed: int, log_f: np.ndarray | None = None, log_s: np.ndarray | None = None, set_sd: float = 0.02
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Controls smaller and rarer than the top set (log ratios around -0.6), whose effect is linear
    in the log ratios; per-example noise shared by every condition of an example (difficulty) plus
    its own. Returns top, controls, log_f, log_s and the true control effect at ratio 1."""
    rng = np.random.default_rng(seed)
    if log_f is None:
        log_f = rng.uniform(-1.0, 0.2, R)
    if log_s is None:
        log_s = 0.5 * log_f + rng.uniform(-0.6, 0.3, R)
    at_one = -0.05
    difficulty = rng.normal(0, 0.3, N)
    set_means = at_one + SLOPES[0] * log_f + SLOPES[1] * log_s + rng.normal(0, set_sd, R)
    controls = set_means[:, None] + 0.5 * difficulty[None] + rng.normal(0, 0.1, (R, N))
    top = at_one + TRUE_CONTRAST + difficulty + rng.normal(0, 0.3, N)
    return top, controls, log_f, log_s, at_one


def test_the_adjusted_contrast_recovers_the_true_one_where_the_raw_one_is_biased():
    top, controls, log_f, log_s, at_one = synthetic(0)
    result = adjusted_contrast(top, controls, log_f, log_s, Bootstrap(N, 1000, seed=0), seed=1)
    sample_truth = float(top.mean()) - at_one  # the contrast these examples give against ratio-1 controls
    assert result.method == "ols" and result.rank == 3 and result.ci is not None
    assert result.replicates >= 900
    assert result.ci[0] < sample_truth < result.ci[1]
    assert abs(result.adjusted - sample_truth) < 0.05
    assert result.coefficients[1] == pytest.approx(SLOPES[0], abs=0.1)
    assert result.coefficients[2] == pytest.approx(SLOPES[1], abs=0.1)
    # the raw contrast compares with smaller controls: biased by the slopes times the mean log ratios
    assert result.raw == pytest.approx(float(top.mean() - controls.mean()))
    assert abs(result.raw - sample_truth) > 0.15
    assert not result.ci[0] < result.raw < result.ci[1]
    assert "frequency" in result.extrapolated or min(log_f) <= 0 <= max(log_f)


def test_the_interval_covers_the_true_contrast_at_about_its_level():
    """Over repeated studies (new examples, new control sets each time) the 95% interval holds the
    true contrast (population means) in at least 88% of them. The sets' own effects scatter about
    the line (sd 0.2), so an interval that resampled only the examples, not the sets, would miss
    (about 63% in 60 trials when measured)."""
    covered = []
    for trial in range(60):
        top, controls, log_f, log_s, _ = synthetic(100 + trial, set_sd=0.2)
        result = adjusted_contrast(top, controls, log_f, log_s, Bootstrap(N, 300, seed=trial), seed=trial)
        assert result.ci is not None
        covered.append(result.ci[0] <= TRUE_CONTRAST <= result.ci[1])
    assert np.mean(covered) >= 0.88


def test_the_same_ratio_for_every_set_is_not_adjusted():
    top, controls, _, log_s, _ = synthetic(1, log_f=np.full(R, np.log(0.5)))
    result = adjusted_contrast(top, controls, np.full(R, np.log(0.5)), log_s, Bootstrap(N, 200))
    assert result.method == "none" and result.adjusted is None and result.ci is None
    assert "do not identify" in result.note
    assert result.raw == pytest.approx(float(top.mean() - controls.mean()))


def test_sets_matched_exactly_on_one_axis_are_adjusted_on_the_other():
    log_s = np.zeros(R)
    top, controls, log_f, _, at_one = synthetic(2, log_s=log_s)
    result = adjusted_contrast(top, controls, log_f, log_s, Bootstrap(N, 500), seed=3)
    assert result.method == "ols" and result.rank == 2
    assert abs(result.adjusted - (float(top.mean()) - at_one)) < 0.05
    assert result.extrapolated in ([], ["frequency"])


def test_ratios_on_a_line_that_misses_one_are_not_adjusted_but_through_one_are():
    rng = np.random.default_rng(4)
    log_f = rng.uniform(-1.0, -0.2, R)
    top, controls, *_ = synthetic(4, log_f=log_f, log_s=2 * log_f + 0.3)
    missed = adjusted_contrast(top, controls, log_f, 2 * log_f + 0.3, Bootstrap(N, 200))
    assert missed.method == "none" and missed.rank == 2
    through = adjusted_contrast(top, controls, log_f, 2 * log_f, Bootstrap(N, 200))
    assert through.method == "ols" and through.rank == 2 and through.adjusted is not None


def test_too_few_sets_or_an_undefined_ratio_are_not_adjusted():
    top, controls, log_f, log_s, _ = synthetic(5)
    few = adjusted_contrast(top, controls[:4], log_f[:4], log_s[:4], Bootstrap(N, 200))
    assert few.method == "none" and "too few" in few.note
    log_f[3] = np.nan
    undefined = adjusted_contrast(top, controls, log_f, log_s, Bootstrap(N, 200))
    assert undefined.method == "none" and "undefined" in undefined.note
    with pytest.raises(ValueError, match="disagree"):
        adjusted_contrast(top, controls, log_f[:5], log_s, Bootstrap(N, 200))


def test_extrapolation_is_named():
    rng = np.random.default_rng(6)
    log_f = rng.uniform(-1.0, -0.3, R)
    log_s = rng.uniform(-0.2, 0.4, R)
    top, controls, *_ = synthetic(6, log_f=log_f, log_s=log_s)
    result = adjusted_contrast(top, controls, log_f, log_s, Bootstrap(N, 200))
    assert result.method == "ols"
    assert "frequency" in result.extrapolated and "size" not in result.extrapolated
    assert "outside the control sets' ratios (frequency" in result.note
    inside = adjusted_contrast(top, controls, log_f + 0.65, log_s, Bootstrap(N, 200))
    assert inside.extrapolated == [] and inside.note is None
    # inside both ranges, but off the narrow anti-correlated cloud of points: a joint extrapolation
    x = np.linspace(-0.5, 0.5, R)
    corner = adjusted_contrast(top, controls, x, -x + 0.4 + rng.normal(0, 0.02, R), Bootstrap(N, 200))
    assert corner.method == "ols" and corner.extrapolated == ["joint"]


def test_set_log_ratios_are_sums_over_the_set_against_the_top_set():
    values = np.array([4.0, 2.0, 1.0, 1.0, 0.0])
    assert set_log_ratios([0, 1], [[2, 3], [0, 2], [4]], values) == pytest.approx(
        [np.log(2 / 6), np.log(5 / 6), np.nan], nan_ok=True
    )


def test_an_older_sweep_without_the_adjusted_contrast_loads():
    from scircuits.plugins.analyses.sweeps import Sweep, SweepsResult

    old = {
        "k": 1,
        "ablation": "zero",
        "features": [1],
        "accuracy_delta": 0.0,
        "accuracy_ci": [0.0, 0.0],
        "logprob_delta": -1.0,
        "logprob_ci": [-1.5, -0.5],
        "control": None,
        "significant_logprob": None,
        "significant_accuracy": None,
        "control_sets": {
            "features": [[9]],
            "bands": [[2.0]],
            "band": 2.0,
            "widened": 0,
            "min_overlap": 0.5,
            "median_frequency_ratio": 0.51,
            "median_size_ratio": 0.94,
        },
    }
    sweep = SweepsResult.model_validate({"sweeps": [old]}).sweeps[0]
    assert isinstance(sweep, Sweep) and sweep.adjusted_logprob is None and sweep.adjusted_accuracy is None
    assert sweep.control_sets is not None and sweep.control_sets.log_frequency_ratio is None
    assert (
        AdjustedContrast.model_validate(
            adjusted_contrast(*synthetic(7)[:4], Bootstrap(N, 100)).model_dump()
        ).method
        == "ols"
    )
