"""Matched random controls for a top-k feature set.

A control set has as many features as the top-k set. Each of its features stands for one top
feature and is drawn (seeded) among the features that

- are not in the top-k set and not in ``exclude`` (the study passes its own top-ranked features,
  the top 2 x max(top_k) of the ranking: a control must not be a feature the study itself found
  important, which would make the controls look like the top set by construction);
- are not already in this set, and preferably have not been drawn yet for this k (see below);
- fire on the evaluation tokens (frequency > 0);
- are active on at least ``min_overlap`` of the evaluation examples the top feature is active on
  (the same examples);
- have a firing frequency within ``band`` of the top feature's: ratio in [1/band, band];
- have an ablation size (sum over the evaluation tokens of activation x decoder-row norm) within
  ``band`` of the top feature's.

When no feature qualifies, the band widens step by step through ``widen`` (the band factors tried
after ``band``); past the last step the overlap requirement drops to "active on any of the top
feature's examples" and the band becomes unbounded, and past that to any eligible feature. The band
and overlap actually used are recorded for every drawn feature.

The R sets of one k are drawn without replacement while the matched features last: a feature not yet
drawn for this k is taken whenever one stands within the first ``FRESH_STEPS`` bands (0.5-4x). Past
them, matching comes first: a feature already drawn for this k by another set (never twice in one set)
is reused when it stands in a narrower band than any fresh one. On a few thousand latents R x k
distinct matched features do not exist at large k (20 sets of 50 need 1,000), and widening to
unmatched features would make the controls smaller than the top features. The number of distinct
control features per k is recorded (``distinct`` in results.json; R x k when none repeated). When no
candidate is left at all, the draw fails with ``ControlSamplingError``.

Within the band a uniform draw would follow the density of features, which falls with frequency
and size, so controls would be smaller than the top features. Each draw is therefore stratified on
the side of 1 of both ratios: it prefers the quadrant (frequency ratio above or below 1, size ratio
above or below 1) that brings the counts of this k's matches above and below 1 back to balance,
searched in the narrowest band holding any candidate and the next one. The median ratios of every
k (``median_frequency_ratio``, ``median_size_ratio``) are recorded; they sit near 1 unless the top
features are the largest of the SAE (no larger feature to balance with).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

DEFAULT_DRAWS = 20
DEFAULT_BAND = 2.0  # ratios within 0.5-2x
DEFAULT_WIDEN = (3.0, 4.0, 8.0, 16.0)
FRESH_STEPS = 3  # bands 2x, 3x and 4x: a fresh feature there is taken before a repeat
MEDIAN_RANGE = (0.9, 1.1)  # the median control / top ratios aimed at, per k (off: warned)
EXCLUDE_FACTOR = 2  # the study excludes its top EXCLUDE_FACTOR x max(top_k) ranked features


class ControlSamplingError(ValueError):
    """No eligible control feature is left for a top feature."""


class ControlMatch(BaseModel):
    model_config = ConfigDict(frozen=True)

    top: int  # the top feature this control stands for
    control: int
    band: float | None  # ratio band used for frequency and ablation size; None: unbounded
    min_overlap: float  # share of the top feature's examples the control had to be active on
    frequency_ratio: float  # control / top
    size_ratio: float  # control / top (nan when the top feature's size is 0)


class ControlSet(BaseModel):
    features: list[int]  # in the order of the top features they stand for
    matches: list[ControlMatch]


class MatchedControls(BaseModel):
    top: list[int]
    sets: list[ControlSet]
    band: float
    widen: list[float]
    min_overlap: float
    seed: int | None
    widened: int  # matches that needed a wider band (or the overlap dropped) than ``band``
    excluded: int = 0  # features outside the top set excluded from the draw (``exclude``)

    @property
    def ids(self) -> list[list[int]]:
        """The control feature ids, one list per draw (what results.json saves)."""
        return [s.features for s in self.sets]

    def median_ratio(self, which: str) -> float | None:
        """Median over every match of the control / top ``frequency`` or ``size`` ratio."""
        values = [getattr(m, f"{which}_ratio") for s in self.sets for m in s.matches]
        finite = [v for v in values if math.isfinite(v)]
        return float(np.median(finite)) if finite else None

    @property
    def distinct(self) -> int:
        """Distinct control features over the sets (R x k when none is repeated)."""
        return len({f for s in self.sets for f in s.features})

    def off_medians(self) -> list[str]:
        """The median ratios outside ``MEDIAN_RANGE``, in words ("frequency 0.62")."""
        low, high = MEDIAN_RANGE
        medians = ((which, self.median_ratio(which)) for which in ("frequency", "size"))
        return [
            f"{which} {value:.2f}"
            for which, value in medians
            if value is not None and not low <= value <= high
        ]


def ablation_size(activation_sums: np.ndarray, decoder_norms: np.ndarray) -> np.ndarray:
    """Per-feature ablation size: (sum over evaluation tokens of the activation) x decoder-row norm."""
    return np.asarray(activation_sums, dtype=np.float64) * np.asarray(decoder_norms, dtype=np.float64)


def excluded_features(ranked: Sequence[int], top_k: Sequence[int]) -> list[int]:
    """The study's own top-ranked features, kept out of every control set: the top
    ``EXCLUDE_FACTOR`` x max(top_k) of the ranking."""
    return [int(i) for i in ranked[: EXCLUDE_FACTOR * max(top_k, default=0)]]


def _ratio(values: np.ndarray, reference: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return values / reference if reference > 0 else np.full_like(values, np.nan)


def _within(ratio: np.ndarray, band: float | None, reference: float) -> np.ndarray:
    if band is None:
        return np.ones_like(ratio, dtype=bool)
    if reference <= 0:  # a top feature of size 0 is matched by features of size 0
        return np.zeros_like(ratio, dtype=bool)
    return (ratio >= 1.0 / band) & (ratio <= band)


Step = tuple[float | None, float, np.ndarray]  # band, overlap needed, eligibility mask


def sample_matched_controls(
    top: Sequence[int],
    frequency: np.ndarray,
    size: np.ndarray,
    example_activity: np.ndarray,
    *,
    draws: int = DEFAULT_DRAWS,
    band: float = DEFAULT_BAND,
    widen: Sequence[float] = DEFAULT_WIDEN,
    min_overlap: float = 0.5,
    exclude: Sequence[int] = (),
    rng: np.random.Generator | int = 0,
) -> MatchedControls:
    """``draws`` control sets matched to the features ``top``; no feature twice in a set, and none
    twice for this k while matched ones last (module docstring).

    ``frequency`` (d_sae,): firing frequency per token; ``size`` (d_sae,): ablation size (see
    ``ablation_size``); ``example_activity`` (n_examples, d_sae) bool: feature active anywhere in the
    example; ``exclude``: features never drawn (besides ``top``); ``rng``: a numpy generator or a seed.
    """
    frequency = np.asarray(frequency, dtype=np.float64)
    size = np.asarray(size, dtype=np.float64)
    activity = np.asarray(example_activity, dtype=bool)
    d_sae = frequency.shape[0]
    if size.shape != (d_sae,) or activity.ndim != 2 or activity.shape[1] != d_sae:
        raise ValueError(
            f"frequency {frequency.shape}, size {size.shape} and example_activity {activity.shape} "
            "must describe the same features"
        )
    top = [int(i) for i in top]
    if len(set(top)) != len(top) or any(not 0 <= i < d_sae for i in top):
        raise ValueError(f"top features must be distinct ids in [0, {d_sae}): {top}")
    if band < 1 or any(w < band for w in widen) or list(widen) != sorted(widen):
        raise ValueError(f"band {band} must be >= 1 and the widening steps {list(widen)} increasing from it")
    seed = rng if isinstance(rng, int) else None
    generator = np.random.default_rng(rng) if isinstance(rng, int) else rng

    base = (frequency > 0) & activity.any(axis=0)
    base[top] = False
    outside = sorted({int(i) for i in exclude if 0 <= int(i) < d_sae} - set(top))
    base[outside] = False
    n_examples = max(activity.shape[0], 1)
    overlap_counts = activity.T.astype(np.int64) @ activity.astype(np.int64)[:, top]  # (d_sae, len(top))
    ladder: list[list[Step]] = []  # per top feature: eligibility masks, narrowest first
    sides: list[tuple[np.ndarray, np.ndarray]] = []  # per top feature: frequency, size ratio >= 1
    for j, feature in enumerate(top):
        own = int(activity[:, feature].sum())
        overlap = overlap_counts[:, j] / own if own else np.zeros(d_sae)
        f_ratio, s_ratio = _ratio(frequency, frequency[feature]), _ratio(size, size[feature])
        steps: list[Step] = []
        for factor in (band, *widen):
            mask = (
                base
                & (overlap >= min_overlap)
                & _within(f_ratio, factor, frequency[feature])
                & _within(s_ratio, factor, size[feature])
            )
            steps.append((factor, min_overlap, mask))
        steps.append((None, 1.0 / n_examples if own else 0.0, base & ((overlap > 0) | (own == 0))))
        steps.append((None, 0.0, base))
        ladder.append(steps)
        sides.append((f_ratio >= 1, s_ratio >= 1))

    used = np.zeros(d_sae, dtype=bool)
    balance = np.zeros(2, dtype=np.int64)  # (frequency, size): matches above 1 minus matches below
    chosen: list[list[ControlMatch | None]] = []
    widened = 0
    for r in range(draws):
        matches: list[ControlMatch | None] = [None] * len(top)
        for offset in range(len(top)):
            j = (r + offset) % len(top)  # rotate which top feature picks first
            feature = top[j]
            in_set = np.zeros(d_sae, dtype=bool)
            in_set[[m.control for m in matches if m is not None]] = True
            found = _draw(ladder[j], sides[j], used, in_set, balance, generator)
            if found is None:
                raise ControlSamplingError(
                    f"no control feature left for top feature {feature}: fewer eligible features outside "
                    f"the top {len(top)} and the {len(outside)} excluded ones than one control set of "
                    f"{len(top)} distinct features needs; lower the largest k"
                )
            step, factor, overlap_needed, choice = found
            widened += step > 0
            used[choice] = True
            f_ratio = float(frequency[choice] / frequency[feature]) if frequency[feature] > 0 else math.nan
            s_ratio = float(size[choice] / size[feature]) if size[feature] > 0 else math.nan
            for axis, value in enumerate((f_ratio, s_ratio)):
                if math.isfinite(value) and value != 1.0:
                    balance[axis] += 1 if value > 1 else -1
            matches[j] = ControlMatch(
                top=feature,
                control=choice,
                band=factor,
                min_overlap=overlap_needed,
                frequency_ratio=f_ratio,
                size_ratio=s_ratio,
            )
        chosen.append(matches)
    sets = [ControlSet(features=[m.control for m in ms if m], matches=[m for m in ms if m]) for ms in chosen]
    return MatchedControls(
        top=top,
        sets=sets,
        band=band,
        widen=list(widen),
        min_overlap=min_overlap,
        seed=seed,
        widened=widened,
        excluded=len(outside),
    )


def _narrowest(steps: list[Step], available: np.ndarray) -> int | None:
    return next((i for i, (_, _, mask) in enumerate(steps) if (mask & available).any()), None)


def _draw(
    steps: list[Step],
    sides: tuple[np.ndarray, np.ndarray],
    used: np.ndarray,
    in_set: np.ndarray,
    balance: np.ndarray,
    generator: np.random.Generator,
) -> tuple[int, float | None, float, int] | None:
    """(step index, band, overlap, feature): a uniform draw in the narrowest step with a candidate
    (one not yet drawn for this k while one stands within ``FRESH_STEPS``, else the narrowest step
    with any candidate outside this set), from the quadrant of ratio sides that restores ``balance``
    when the narrowest or the next step holds one."""
    fresh = _narrowest(steps, ~used)
    reuse = _narrowest(steps, ~in_set)
    if reuse is None:
        return None
    if fresh is not None and (fresh < FRESH_STEPS or fresh <= reuse):
        available, narrowest = ~used, fresh
    else:
        available, narrowest = ~in_set, reuse
    wanted = [None if b == 0 else b < 0 for b in balance]  # per axis: want ratio >= 1? (None: either)
    f_above, s_above = sides
    quadrants = []
    for f_want, s_want in ((wanted[0], wanted[1]), (wanted[0], None), (None, wanted[1])):
        if f_want is None and s_want is None:
            continue
        quadrant = np.ones_like(used)
        if f_want is not None:
            quadrant &= f_above == f_want
        if s_want is not None:
            quadrant &= s_above == s_want
        quadrants.append(quadrant)
    for quadrant in quadrants:
        for index in range(narrowest, min(narrowest + 2, len(steps))):
            factor, overlap_needed, mask = steps[index]
            if factor is None and index > narrowest:
                break  # never leave the bands for balance
            candidates = np.flatnonzero(mask & available & quadrant)
            if len(candidates):
                return index, factor, overlap_needed, int(generator.choice(candidates))
    factor, overlap_needed, mask = steps[narrowest]
    return narrowest, factor, overlap_needed, int(generator.choice(np.flatnonzero(mask & available)))


def sample_unmatched_controls(
    top: Sequence[int], active: np.ndarray, *, draws: int = DEFAULT_DRAWS, rng: np.random.Generator | int = 0
) -> list[list[int]]:
    """The old controls (for comparison only): sets drawn uniformly among active features outside
    ``top``, with no matching."""
    generator = np.random.default_rng(rng) if isinstance(rng, int) else rng
    excluded = set(int(i) for i in top)
    pool = np.array([i for i in np.flatnonzero(np.asarray(active)) if int(i) not in excluded])
    if len(pool) < len(excluded):
        raise ControlSamplingError(f"only {len(pool)} active features outside the top {len(excluded)}")
    return [
        sorted(int(i) for i in generator.choice(pool, size=len(excluded), replace=False))
        for _ in range(draws)
    ]


__all__ = [
    "DEFAULT_BAND",
    "DEFAULT_DRAWS",
    "DEFAULT_WIDEN",
    "EXCLUDE_FACTOR",
    "ControlMatch",
    "ControlSamplingError",
    "ControlSet",
    "MatchedControls",
    "ablation_size",
    "excluded_features",
    "sample_matched_controls",
    "sample_unmatched_controls",
]
