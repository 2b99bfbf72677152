"""Is the top-k set's effect larger than that of matched random sets? Three figures per k.

For each k the inputs are per-example effects (score under the ablation minus the score with the
plain splice, one value per evaluation example) of the top-k set and of R matched control sets
(``scircuits.platform.causal.controls``), all on the same examples.

- ``difference``: a paired bootstrap interval of the per-example difference d_i = top_i - mean_r
  control_{r,i}. Each replicate resamples examples once and uses the same indices for the top set
  and every control (``statistics.Bootstrap``; pass one object to share replicates across k).
- ``p_value``: a permutation p-value. The scalar effect of a set is its mean over the examples;
  p = (1 + #{r : control effect r at least as large as the top set's}) / (R + 1). "At least as
  large" is in magnitude by default (``alternative="magnitude"``: |c_r| >= |t|); ``"less"`` counts
  c_r <= t (ablation lowers the score), ``"greater"`` c_r >= t. Under exchangeability (the top set
  is one more random matched set) p is uniform on {1/(R+1), ..., 1}.
- ``p_holm``: Holm's step-down correction across the k values tested.
- ``significant``: the interval excludes 0 AND p_holm < ``alpha``.

With R draws the smallest p-value is 1/(R+1) and Holm multiplies the smallest of m p-values by m,
so nothing can be significant unless (R + 1) * alpha > m; ``min_draws(m, alpha)`` gives the
smallest R that allows it (80 for m = 4 k values at alpha 0.05). ``SignificanceResult.attainable``
says whether the run's R allowed a significant call at all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel

from scircuits.platform.causal.statistics import Bootstrap

Alternative = Literal["magnitude", "less", "greater"]
ALPHA = 0.05


class PairedDifference(BaseModel):
    mean: float
    low: float
    high: float
    level: float
    n_examples: int
    n_replicates: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


class KTest(BaseModel):
    k: int
    top_effect: float  # mean over examples
    control_effects: list[float]  # mean over examples, one per control set
    control_mean: float
    difference: PairedDifference
    p_value: float
    p_holm: float
    significant: bool


class SignificanceResult(BaseModel):
    tests: list[KTest]
    alpha: float
    alternative: Alternative
    n_controls: int
    attainable: bool  # whether R and the number of k values allow p_holm < alpha at all
    method: str = (
        "paired bootstrap of top - mean(control) per example; permutation p-value (1 + #controls at "
        "least as large) / (R + 1); Holm across k; significant = interval excludes 0 and p_holm < alpha"
    )

    def by_k(self) -> dict[int, KTest]:
        return {t.k: t for t in self.tests}


def paired_difference(top: np.ndarray, controls: np.ndarray, bootstrap: Bootstrap) -> PairedDifference:
    """Interval of mean_i (top_i - mean_r controls_{r,i}); ``top`` (n,), ``controls`` (R, n)."""
    top = np.asarray(top, dtype=np.float64)
    controls = np.atleast_2d(np.asarray(controls, dtype=np.float64))
    if controls.shape[1] != top.shape[0] or controls.shape[0] < 1:
        raise ValueError(f"controls {controls.shape} must be (R >= 1, {top.shape[0]}) like top {top.shape}")
    interval = bootstrap.interval(top - controls.mean(axis=0))
    return PairedDifference(
        mean=interval.mean,
        low=interval.low,
        high=interval.high,
        level=bootstrap.level,
        n_examples=bootstrap.n_examples,
        n_replicates=int(bootstrap.indices.shape[0]),
    )


def permutation_p_value(
    top_effect: float, control_effects: Sequence[float], alternative: Alternative = "magnitude"
) -> float:
    """(1 + #{controls at least as large as the top set}) / (R + 1)."""
    c = np.asarray(control_effects, dtype=np.float64)
    if c.size == 0:
        raise ValueError("a permutation p-value needs at least one control set")
    if alternative == "magnitude":
        hits = np.abs(c) >= abs(top_effect)
    elif alternative == "less":
        hits = c <= top_effect
    elif alternative == "greater":
        hits = c >= top_effect
    else:
        raise ValueError(f"alternative must be magnitude, less or greater, not {alternative!r}")
    return float((1 + hits.sum()) / (c.size + 1))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order (monotone step-down, capped at 1)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    order = np.argsort(p, kind="mergesort")
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()


def min_draws(m: int, alpha: float = ALPHA) -> int:
    """The fewest control sets R for which m Holm-corrected permutation p-values can reach < alpha."""
    draws = max(1, math.floor(m / alpha) - 1)
    while not m / (draws + 1) < alpha:  # the same comparison as ``attainable``
        draws += 1
    return draws


def top_k_significance(
    effects: Mapping[int, tuple[np.ndarray, np.ndarray]],
    bootstrap: Bootstrap,
    *,
    alpha: float = ALPHA,
    alternative: Alternative = "magnitude",
) -> SignificanceResult:
    """``effects[k] = (top (n,), controls (R, n))`` per-example effects; the three figures per k."""
    if not effects:
        raise ValueError("no k values to test")
    ks = sorted(effects)
    rows = []
    for k in ks:
        top, controls = effects[k]
        top = np.asarray(top, dtype=np.float64)
        controls = np.atleast_2d(np.asarray(controls, dtype=np.float64))
        control_means = controls.mean(axis=1)
        rows.append(
            (
                k,
                float(top.mean()),
                control_means,
                paired_difference(top, controls, bootstrap),
                permutation_p_value(float(top.mean()), control_means, alternative),
            )
        )
    adjusted = holm([r[4] for r in rows])
    tests = [
        KTest(
            k=k,
            top_effect=top_effect,
            control_effects=control_means.tolist(),
            control_mean=float(control_means.mean()),
            difference=difference,
            p_value=p,
            p_holm=p_adj,
            significant=difference.excludes_zero and p_adj < alpha,
        )
        for (k, top_effect, control_means, difference, p), p_adj in zip(rows, adjusted, strict=True)
    ]
    n_controls = min(len(t.control_effects) for t in tests)
    return SignificanceResult(
        tests=tests,
        alpha=alpha,
        alternative=alternative,
        n_controls=n_controls,
        attainable=len(ks) / (n_controls + 1) < alpha,
    )


__all__ = [
    "ALPHA",
    "KTest",
    "PairedDifference",
    "SignificanceResult",
    "holm",
    "min_draws",
    "paired_difference",
    "permutation_p_value",
    "top_k_significance",
]
