"""Is the top-k set's effect larger than that of matched random sets? Three figures per k.

For each k the inputs are per-example effects (score under the ablation minus the score with the
plain splice, one value per evaluation example) of the top-k set and of R matched control sets
(``scircuits.platform.causal.controls``), all on the same examples.

- ``difference``: a paired bootstrap interval of the per-example difference d_i = top_i - mean_r
  control_{r,i}. Each replicate resamples examples once and uses the same indices for the top set
  and every control (``statistics.Bootstrap``; pass one object to share replicates across k).
- ``p_value``: the exact permutation p-value. The scalar effect of a set is its mean over the
  examples; p = (1 + #{r : control effect r at least as large as the top set's}) / (R + 1). "At
  least as large" is in magnitude by default (``alternative="magnitude"``: |c_r| >= |t|); ``"less"``
  counts c_r <= t (ablation lowers the score), ``"greater"`` c_r >= t. Under exchangeability (the
  top set is one more random matched set) P(p <= j/(R+1)) <= j/(R+1) whatever the control law:
  normal, heavy-tailed or skewed. No law is fitted.
- ``p_adjusted``: the family-wise correction across the k values. With R >= ``min_draws(m)``
  (80 for m = 4 k values) Holm's step-down correction (order-free). Below it the smallest exact p,
  1/(R+1), can never pass Holm, so the k values are tested in a fixed sequence declared before the
  data (largest k first: the largest set has the largest expected effect): each k is tested at the
  full ``alpha`` and only while every larger k was called; its adjusted p is the largest p so far
  in the sequence. Both keep the family-wise rate of false calls <= alpha under any dependence
  between the k values (fixed-sequence testing: Maurer, Hothorn & Lehmacher 1995).
- ``significant``: the paired interval excludes 0 AND p_adjusted < ``alpha`` (and, in the fixed
  sequence, every larger k significant).

With R < 1/alpha - 1 (19 at alpha 0.05) no exact p reaches alpha: ``SignificanceResult.attainable``
is then False and nothing is called. ``KTest.p_normal`` (a normal fit of the control effects) was the
call's basis before; it is no longer computed: it called 10-14% of null top sets significant when
the control effects follow t(2), t(3) or lognormal laws.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel

from scircuits.platform.causal.statistics import Bootstrap

Alternative = Literal["magnitude", "less", "greater"]
Basis = Literal["permutation", "normal"]
Procedure = Literal["holm", "fixed-sequence"]
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
    "holm": (
        "paired bootstrap of top - mean(control) per example; exact permutation p-value (1 + #controls "
        "at least as large) / (R + 1); Holm across k; significant = interval excludes 0 and p_holm < alpha"
    ),
    "fixed-sequence": (
        "paired bootstrap of top - mean(control) per example; exact permutation p-value (1 + #controls "
        "at least as large) / (R + 1); the k values tested in a fixed sequence, largest k first, each "
        "at alpha while every larger k was called (family-wise rate <= alpha for any control law); "
        "significant = interval excludes 0, p < alpha and every larger k significant"
    ),
}


class KTest(BaseModel):
    k: int
    top_effect: float  # mean over examples
    control_effects: list[float]  # mean over examples, one per control set
    control_mean: float
    difference: PairedDifference
    p_value: float  # exact permutation p
    significant: bool | None  # None: not tested (accuracy when the model cannot do the benchmark)
    p_adjusted: float | None = None  # corrected for the k values by ``procedure``
    procedure: Procedure | None = None
    basis: Basis = "permutation"  # the p-value the call rests on ("normal": older results.json only)
    p_holm: float | None = None  # older results.json: Holm-corrected ``basis`` p
    p_normal: float | None = None  # older results.json: prediction p against a normal fit

    @property
    def corrected_p(self) -> float | None:
        """The p the call compared with alpha, whichever version wrote it."""
        return self.p_adjusted if self.p_adjusted is not None else self.p_holm


class SignificanceResult(BaseModel):
    tests: list[KTest]
    alpha: float
    alternative: Alternative
    n_controls: int
    attainable: bool  # whether R allows a significant call at all
    basis: Basis = "permutation"
    procedure: Procedure | None = None
    method: str = ""

    def model_post_init(self, context: object) -> None:
        if not self.method and self.procedure is not None:
            self.method = METHODS[self.procedure]

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


def fixed_sequence(p_values: Sequence[float]) -> list[float]:
    """Fixed-sequence adjusted p-values, in the given (testing) order: the largest p so far."""
    return np.maximum.accumulate(np.asarray(p_values, dtype=np.float64)).tolist() if len(p_values) else []


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
    sequence = sorted(effects, reverse=True)  # the fixed sequence: largest k first
    rows = []
    for k in sequence:
        top, controls = effects[k]
        top = np.asarray(top, dtype=np.float64)
        controls = np.atleast_2d(np.asarray(controls, dtype=np.float64))
        control_means = controls.mean(axis=1)
        top_effect = float(top.mean())
        p = permutation_p_value(top_effect, control_means, alternative)
        rows.append((k, top_effect, control_means, paired_difference(top, controls, bootstrap), p))
    n_controls = min(len(r[2]) for r in rows)
    procedure: Procedure = "holm" if len(rows) / (n_controls + 1) < alpha else "fixed-sequence"
    p_values = [r[4] for r in rows]
    adjusted = holm(p_values) if procedure == "holm" else fixed_sequence(p_values)
    tests = []
    gate_open = True
    for (k, top_effect, control_means, difference, p), p_adj in zip(rows, adjusted, strict=True):
        significant = difference.excludes_zero and p_adj < alpha
        if procedure == "fixed-sequence":
            significant = significant and gate_open
            gate_open = significant
        tests.append(
            KTest(
                k=k,
                top_effect=top_effect,
                control_effects=control_means.tolist(),
                control_mean=float(control_means.mean()),
                difference=difference,
                p_value=p,
                p_adjusted=p_adj,
                procedure=procedure,
                significant=significant,
            )
        )
    return SignificanceResult(
        tests=sorted(tests, key=lambda t: t.k),
        alpha=alpha,
        alternative=alternative,
        n_controls=n_controls,
        attainable=1 / (n_controls + 1) < alpha,
        procedure=procedure,
    )


__all__ = [
    "ALPHA",
    "KTest",
    "PairedDifference",
    "SignificanceResult",
    "fixed_sequence",
    "holm",
    "min_draws",
    "paired_difference",
    "permutation_p_value",
    "top_k_significance",
]
