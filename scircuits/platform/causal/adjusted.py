"""The covariate-adjusted contrast: the top set's effect against the control effect predicted at
matched ratios, for controls that could not be matched.

When the matched controls of a k are smaller or rarer than the top features (``off_medians``), the
raw contrast top − mean(controls) compares the top set with weaker sets. Here the R control sets'
effects are regressed (least squares, with intercept) on their log frequency ratio and log size
ratio to the top set, and the fit is read at ratio 1 (log 0): the control effect a set as busy and as
large as the top set would have, if the effect is linear in the two log ratios. The contrast is
top − that prediction. It is an estimate reported beside the raw contrast; the study's call (exact
p, fixed sequence) does not use it.

A set's ratio is its total over the top set's: Σ frequency(control) / Σ frequency(top), and the
same for ablation size (the sums weight each member by how much it fires and how much it removes,
which is what an ablation of the whole set takes out).

Interval: a two-way bootstrap. Each replicate resamples the evaluation examples (the study's own
replicates, shared with the top set: paired) and, independently, the R control sets, then refits
the regression and takes top − prediction. It carries the top effect's uncertainty, the examples'
noise in every set's effect and the regression's uncertainty over which sets were drawn.

Degenerate designs: the prediction at ratio 1 is used only when it is estimable, i.e. the point
(1, 0, 0) lies in the row space of the design [1, log f, log s] (then every least-squares fit gives
the same prediction, even when the design has lower rank, e.g. every set matched exactly on size).
It is not when every set has the same ratio on an axis other than 1, or when the two ratios move
together on a line that misses (0, 0). Then, or with fewer than rank + 2 sets, or with a set whose
ratio is not finite, nothing is adjusted (``method: none`` and a ``note`` saying why); the raw
contrast stands. Bootstrap replicates whose resampled design is not estimable are dropped; with
fewer than 90% of them left the interval is not given.

Extrapolation: ``extrapolated`` names each axis on which log 0 lies outside the sets' range, and
"joint" when the target point has more leverage than every set (outside the design's cloud even
when inside both ranges). Then the prediction rests on the straight line beyond the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel

from scircuits.platform.causal.statistics import Bootstrap

MIN_VALID_REPLICATES = 0.9  # share of bootstrap replicates that must be refittable for an interval
_TARGET = np.array([1.0, 0.0, 0.0])  # intercept, log frequency ratio 0, log size ratio 0


class AdjustedContrast(BaseModel):
    method: Literal["ols", "none"]  # "none": not adjusted (``note`` says why)
    raw: float  # top − mean(controls): the paired contrast, unadjusted
    adjusted: float | None  # top − the control effect predicted at ratio 1
    adjusted_control: float | None  # the control effect predicted at ratio 1
    ci: list[float] | None  # two-way bootstrap percentile interval of ``adjusted``
    level: float
    coefficients: list[float] | None  # intercept, per unit log frequency ratio, per unit log size ratio
    rank: int | None  # rank of the design [1, log f, log s] (3 unless degenerate)
    n_sets: int
    replicates: int  # bootstrap replicates refitted (the others had a degenerate resampled design)
    log_frequency_range: list[float] | None  # min, max over the sets
    log_size_range: list[float] | None
    extrapolated: list[str]  # "frequency", "size": ratio 1 outside the sets' range; "joint": see module
    note: str | None = None


def set_log_ratios(top: Sequence[int], sets: Sequence[Sequence[int]], values: np.ndarray) -> list[float]:
    """Per control set: log(Σ values over the set / Σ values over the top set); nan when a sum is 0."""
    values = np.asarray(values, dtype=np.float64)
    reference = float(values[list(top)].sum())
    out = []
    for members in sets:
        total = float(values[list(members)].sum())
        out.append(float(np.log(total / reference)) if total > 0 and reference > 0 else float("nan"))
    return out


def _estimable(design: np.ndarray, tolerance: float = 1e-8) -> tuple[bool, int, np.ndarray]:
    """Whether the prediction at ``_TARGET`` is unique; the design's rank; its pseudo-inverse."""
    pinv = np.linalg.pinv(design, rcond=tolerance)
    rank = int(np.linalg.matrix_rank(design, tol=None))
    projected = pinv @ design @ _TARGET
    return bool(np.abs(projected - _TARGET).max() < 1e-6), rank, pinv


def adjusted_contrast(
    top: np.ndarray,
    controls: np.ndarray,
    log_frequency_ratio: Sequence[float],
    log_size_ratio: Sequence[float],
    bootstrap: Bootstrap,
    seed: int | Sequence[int] = 0,
) -> AdjustedContrast:
    """``top`` (n,): per-example effect of the top set; ``controls`` (R, n): per-example effect of
    each control set; one log ratio pair per set; ``seed`` seeds the resampling of the sets (the
    examples' replicates are ``bootstrap``'s). See the module docstring."""
    top = np.asarray(top, dtype=np.float64)
    controls = np.atleast_2d(np.asarray(controls, dtype=np.float64))
    x_f = np.asarray(log_frequency_ratio, dtype=np.float64)
    x_s = np.asarray(log_size_ratio, dtype=np.float64)
    n_sets = controls.shape[0]
    if controls.shape[1] != top.shape[0] or x_f.shape != (n_sets,) or x_s.shape != (n_sets,):
        raise ValueError(
            f"controls {controls.shape}, ratios {x_f.shape}/{x_s.shape} and top {top.shape} disagree"
        )
    raw = float(top.mean() - controls.mean())
    empty = {
        "method": "none",
        "raw": raw,
        "adjusted": None,
        "adjusted_control": None,
        "ci": None,
        "level": bootstrap.level,
        "coefficients": None,
        "rank": None,
        "n_sets": n_sets,
        "replicates": 0,
        "log_frequency_range": None,
        "log_size_range": None,
        "extrapolated": [],
    }
    if not (np.isfinite(x_f).all() and np.isfinite(x_s).all()):
        return AdjustedContrast(**empty, note="a control set has a ratio of 0 or undefined: not adjusted")
    ranges = {
        "log_frequency_range": [float(x_f.min()), float(x_f.max())],
        "log_size_range": [float(x_s.min()), float(x_s.max())],
    }
    design = np.column_stack([np.ones(n_sets), x_f, x_s])
    estimable, rank, pinv = _estimable(design)
    if not estimable:
        return AdjustedContrast(
            **{**empty, **ranges, "rank": rank},
            note=(
                "the control sets' ratios do not identify the effect at ratio 1 (every set has the same "
                "ratio on an axis, or the two ratios lie on a line that misses 1/1): not adjusted"
            ),
        )
    if n_sets < rank + 2:
        return AdjustedContrast(
            **{**empty, **ranges, "rank": rank},
            note=f"{n_sets} control sets are too few to fit {rank} coefficients with residuals: not adjusted",
        )
    set_effects = controls.mean(axis=1)
    beta = pinv @ set_effects
    predicted = float(_TARGET @ beta)
    extrapolated = [axis for axis, x in (("frequency", x_f), ("size", x_s)) if not x.min() <= 0.0 <= x.max()]
    leverage = np.einsum("ij,ji->i", design, pinv)  # diagonal of the hat matrix
    if float(_TARGET @ pinv @ pinv.T @ _TARGET) > leverage.max() + 1e-12:
        extrapolated.append("joint")

    rng = np.random.default_rng(list(seed) if not isinstance(seed, int) else seed)
    differences = []
    for examples in bootstrap.indices:
        picks = rng.integers(0, n_sets, size=n_sets)
        resampled = design[picks]
        ok, _, resampled_pinv = _estimable(resampled)
        if not ok or len(np.unique(picks)) < rank + 2:
            continue
        effects = controls[:, examples].mean(axis=1)[picks]
        differences.append(float(top[examples].mean()) - float(_TARGET @ resampled_pinv @ effects))
    replicates = len(differences)
    total = bootstrap.indices.shape[0]
    interval = None
    note = None
    if replicates >= MIN_VALID_REPLICATES * total:
        tail = (1.0 - bootstrap.level) / 2.0
        low, high = np.quantile(differences, [tail, 1.0 - tail])
        interval = [float(low), float(high)]
    else:
        note = (
            f"only {replicates} of {total} bootstrap replicates could be refitted (resampled sets too "
            "alike): no interval"
        )
    if extrapolated:
        where = ", ".join(extrapolated)
        note = (note + "; " if note else "") + (
            f"ratio 1 lies outside the control sets' ratios ({where}): the prediction extrapolates "
            "the straight line"
        )
    return AdjustedContrast(
        method="ols",
        raw=raw,
        adjusted=float(top.mean()) - predicted,
        adjusted_control=predicted,
        ci=interval,
        level=bootstrap.level,
        coefficients=[float(b) for b in beta],
        rank=rank,
        n_sets=n_sets,
        replicates=replicates,
        extrapolated=extrapolated,
        note=note,
        **ranges,
    )


__all__ = ["AdjustedContrast", "adjusted_contrast", "set_log_ratios"]
