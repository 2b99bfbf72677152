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

With R draws the smallest permutation p-value is 1/(R+1) and Holm multiplies the smallest of m
p-values by m, so the permutation p alone can call nothing significant unless (R + 1) * alpha > m;
``min_draws(m, alpha)`` gives the smallest such R (80 for m = 4 k values at alpha 0.05). Below it
(the default R = 20 keeps the run inside its time budget) the decision uses ``p_normal``: the
two-sided prediction p-value of the top set's effect against a normal law fitted to the R control
effects (t = (top − mean) / (sd·√(1 + 1/R)), R − 1 degrees of freedom), Holm-corrected across k,
and it also requires the exact permutation p at its minimum 1/(R+1) (the top set beyond every
control), so a poor normal fit in the tails cannot make a call the controls themselves contradict.
``KTest.basis`` says which p a call rests on; ``SignificanceResult.attainable`` whether a
significant call was possible at all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel
from scipy import stats as scipy_stats

from scircuits.platform.causal.statistics import Bootstrap

Alternative = Literal["magnitude", "less", "greater"]
Basis = Literal["permutation", "normal"]
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


METHODS: dict[str, str] = {
    "permutation": (
        "paired bootstrap of top - mean(control) per example; permutation p-value (1 + #controls at "
        "least as large) / (R + 1); Holm across k; significant = interval excludes 0 and p_holm < alpha"
    ),
    "normal": (
        "paired bootstrap of top - mean(control) per example; permutation p-value (1 + #controls at "
        "least as large) / (R + 1), too coarse at this R for Holm across k, so the call uses the "
        "two-sided prediction p-value against a normal fit of the R control effects (t with R - 1 "
        "degrees of freedom), Holm across k; significant = interval excludes 0, p_holm < alpha and "
        "the top set beyond every control set"
    ),
}


class KTest(BaseModel):
    k: int
    top_effect: float  # mean over examples
    control_effects: list[float]  # mean over examples, one per control set
    control_mean: float
    difference: PairedDifference
    p_value: float  # exact permutation p
    p_holm: float  # Holm-corrected ``basis`` p
    significant: bool
    p_normal: float | None = None  # prediction p against a normal fit of the control effects
    basis: Basis = "permutation"  # the p-value the Holm correction and the call rest on


class SignificanceResult(BaseModel):
    tests: list[KTest]
    alpha: float
    alternative: Alternative
    n_controls: int
    attainable: bool  # whether R and the number of k values allow a significant call at all
    basis: Basis = "permutation"
    method: str = ""

    def model_post_init(self, context: object) -> None:
        if not self.method:
            self.method = METHODS[self.basis]

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


def normal_p_value(
    top_effect: float, control_effects: Sequence[float], alternative: Alternative = "magnitude"
) -> float | None:
    """The prediction p-value of ``top_effect`` as one more draw from a normal law fitted to the
    control effects: t = (top - mean) / (sd * sqrt(1 + 1/R)) on R - 1 degrees of freedom; two-sided
    for ``magnitude``. None with fewer than 2 controls."""
    c = np.asarray(control_effects, dtype=np.float64)
    if c.size < 2:
        return None
    spread = float(c.std(ddof=1)) * math.sqrt(1 + 1 / c.size)
    distance = top_effect - float(c.mean())
    if spread == 0:
        far = {"magnitude": distance != 0, "less": distance < 0, "greater": distance > 0}[alternative]
        return 0.0 if far else 1.0
    t = distance / spread
    law = scipy_stats.t(df=c.size - 1)
    if alternative == "magnitude":
        return float(min(1.0, 2 * law.sf(abs(t))))
    if alternative == "less":
        return float(law.cdf(t))
    if alternative == "greater":
        return float(law.sf(t))
    raise ValueError(f"alternative must be magnitude, less or greater, not {alternative!r}")


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
        top_effect = float(top.mean())
        rows.append(
            (
                k,
                top_effect,
                control_means,
                paired_difference(top, controls, bootstrap),
                permutation_p_value(top_effect, control_means, alternative),
                normal_p_value(top_effect, control_means, alternative),
            )
        )
    n_controls = min(len(r[2]) for r in rows)
    exact_enough = len(ks) / (n_controls + 1) < alpha
    basis: Basis = "permutation" if exact_enough or n_controls < 2 else "normal"
    adjusted = holm([r[4] if basis == "permutation" else r[5] for r in rows])
    tests = []
    for (k, top_effect, control_means, difference, p, p_normal), p_adj in zip(rows, adjusted, strict=True):
        beyond_every_control = p <= 1 / (len(control_means) + 1) + 1e-12
        significant = difference.excludes_zero and p_adj < alpha
        if basis == "normal":
            significant = significant and beyond_every_control
        tests.append(
            KTest(
                k=k,
                top_effect=top_effect,
                control_effects=control_means.tolist(),
                control_mean=float(control_means.mean()),
                difference=difference,
                p_value=p,
                p_normal=p_normal,
                p_holm=p_adj,
                significant=significant,
                basis=basis,
            )
        )
    return SignificanceResult(
        tests=tests,
        alpha=alpha,
        alternative=alternative,
        n_controls=n_controls,
        attainable=exact_enough or basis == "normal",
        basis=basis,
    )


__all__ = [
    "ALPHA",
    "KTest",
    "PairedDifference",
    "SignificanceResult",
    "holm",
    "min_draws",
    "normal_p_value",
    "paired_difference",
    "permutation_p_value",
    "top_k_significance",
]
