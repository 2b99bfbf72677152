"""Matched random controls for a top-k feature set.

A control set has as many features as the top-k set. Each of its features stands for one top
feature and is drawn (seeded) among the features that

- are not in the top-k set and not in ``exclude`` (the study passes its own top-ranked features,
  the top 2 x max(top_k) of the ranking: a control must not be a feature the study itself found
  important, which would make the controls look like the top set by construction);
- are not already in this set (a feature may stand in several sets of one k, never twice in one);
- fire on the evaluation tokens (frequency > 0);
- are active on at least ``min_overlap`` of the evaluation examples the top feature is active on
  (the same examples); when none is left, on any of them, and past that any eligible feature (the
  overlap used is recorded for every drawn feature).

Among those, the match is by nearest neighbour in (log frequency, log ablation size), the distance
being the larger of the two |log ratio| (control / top): a feature within distance log b is within
the ratio band b on both. Each draw takes one of the ``neighbours`` nearest candidates (ties at the
last distance included), a feature not yet drawn for this k when one of them is left.

Nearest neighbours alone would follow the density of features, which falls with frequency and size:
around a busy top feature most neighbours are smaller, and the controls come out smaller than the
top features. Each draw is therefore balanced on the side of 1 of both ratios: it looks for its
neighbours in the quadrant (frequency ratio >= 1 or < 1, size ratio >= 1 or < 1) that brings the
counts of this k's matches above and below 1 back to balance, within ``balance_band`` (4x); where
that quadrant is empty it balances the axis further from balance alone, then takes the nearest
neighbours on any side. With the counts balanced, the median ratio of a k lies between the closest
matches below and above 1. The medians of every k are recorded (``median_frequency_ratio``,
``median_size_ratio``); ``off_medians`` lists those outside ``MEDIAN_RANGE`` (0.9-1.1), which happens
when the pool cannot match: the top features are the busiest or largest of the SAE (no larger
feature outside the exclusions), or too few features are eligible. The smallest band of ``band``,
``*widen`` holding each match is recorded (None: beyond the last), and ``widened`` counts the matches
outside ``band`` or with the overlap requirement dropped. When no candidate is left at all, the draw
fails with ``ControlSamplingError``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

DEFAULT_DRAWS = 20
DEFAULT_BAND = 2.0  # ratios within 0.5-2x
DEFAULT_WIDEN = (3.0, 4.0, 8.0, 16.0)
DEFAULT_NEIGHBOURS = 3  # a draw takes one of the 3 nearest candidates (on the side it balances)
BALANCE_BAND = 4.0  # a draw goes to the side of 1 that restores balance only within 0.25-4x
MEDIAN_RANGE = (0.9, 1.1)  # the median control / top ratios aimed at, per k
EXCLUDE_FACTOR = 2  # the study excludes its top EXCLUDE_FACTOR x max(top_k) ranked features


class ControlSamplingError(ValueError):
    """No eligible control feature is left for a top feature."""


class ControlMatch(BaseModel):
    model_config = ConfigDict(frozen=True)

    top: int  # the top feature this control stands for
    control: int
    band: float | None  # smallest ratio band holding both ratios; None: beyond the widest
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
    widened: int  # matches outside ``band`` or with the overlap requirement dropped
    excluded: int = 0  # features outside the top set excluded from the draw (``exclude``)
    neighbours: int = DEFAULT_NEIGHBOURS

    @property
    def ids(self) -> list[list[int]]:
        """The control feature ids, one list per draw (what results.json saves)."""
        return [s.features for s in self.sets]

    @property
    def distinct(self) -> int:
        """Distinct control features over the sets (R x k when none is repeated)."""
        return len({f for s in self.sets for f in s.features})

    def median_ratio(self, which: str) -> float | None:
        """Median over every match of the control / top ``frequency`` or ``size`` ratio."""
        values = [getattr(m, f"{which}_ratio") for s in self.sets for m in s.matches]
        finite = [v for v in values if math.isfinite(v)]
        return float(np.median(finite)) if finite else None

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


def _log_ratio(values: np.ndarray, reference: float) -> np.ndarray:
    """log(value / reference); nan for every feature when the reference is 0 (the axis is ignored),
    -inf for a value of 0."""
    if reference <= 0:
        return np.full_like(values, np.nan)
    with np.errstate(divide="ignore"):
        return np.log(values / reference)


class _Neighbourhood:
    """One top feature's candidates: eligibility tiers by overlap, distances and ratio sides."""

    def __init__(
        self, frequency: np.ndarray, size: np.ndarray, tiers: list[tuple[float, np.ndarray]], feature: int
    ) -> None:
        self.tiers = tiers
        self.log_f = _log_ratio(frequency, float(frequency[feature]))
        self.log_s = _log_ratio(size, float(size[feature]))
        both = np.abs(np.stack([self.log_f, self.log_s]))
        both[np.isnan(both)] = 0.0  # an axis the top feature gives no reference for does not count
        self.distance = both.max(axis=0)
        # per axis: the ratio's side of 1 (True: >= 1), or None when the axis is undefined
        self.sides = [None if np.isnan(lr).all() else lr >= 0 for lr in (self.log_f, self.log_s)]


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
    neighbours: int = DEFAULT_NEIGHBOURS,
    balance_band: float = BALANCE_BAND,
    rng: np.random.Generator | int = 0,
) -> MatchedControls:
    """``draws`` control sets matched to the features ``top`` (module docstring): nearest neighbours
    in (log frequency, log size), balanced on the side of 1 of both ratios, no feature twice in a set.

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
    if neighbours < 1 or balance_band < 1:
        raise ValueError(f"neighbours {neighbours} must be >= 1 and balance_band {balance_band} >= 1")
    seed = rng if isinstance(rng, int) else None
    generator = np.random.default_rng(rng) if isinstance(rng, int) else rng

    base = (frequency > 0) & activity.any(axis=0)
    base[top] = False
    outside = sorted({int(i) for i in exclude if 0 <= int(i) < d_sae} - set(top))
    base[outside] = False
    n_examples = max(activity.shape[0], 1)
    overlap_counts = activity.T.astype(np.int64) @ activity.astype(np.int64)[:, top]  # (d_sae, len(top))
    hoods: list[_Neighbourhood] = []
    for j, feature in enumerate(top):
        own = int(activity[:, feature].sum())
        if own:
            overlap = overlap_counts[:, j] / own
            tiers = [(min_overlap, base & (overlap >= min_overlap)), (1.0 / n_examples, base & (overlap > 0))]
        else:
            tiers = []
        tiers.append((0.0, base))
        hoods.append(_Neighbourhood(frequency, size, tiers, feature))
    bands = [band, *widen]
    log_bands = [math.log(b) for b in bands]
    limit = math.log(balance_band)

    used = np.zeros(d_sae, dtype=bool)
    balance = np.zeros(2, dtype=np.int64)  # (frequency, size): matches above 1 minus matches below
    chosen: list[list[ControlMatch | None]] = []
    widened = 0
    for r in range(draws):
        matches: list[ControlMatch | None] = [None] * len(top)
        in_set = np.zeros(d_sae, dtype=bool)
        for offset in range(len(top)):
            j = (r + offset) % len(top)  # rotate which top feature picks first
            feature, hood = top[j], hoods[j]
            tier = next(((need, mask & ~in_set) for need, mask in hood.tiers if (mask & ~in_set).any()), None)
            if tier is None:
                raise ControlSamplingError(
                    f"no control feature left for top feature {feature}: fewer eligible features outside "
                    f"the top {len(top)} and the {len(outside)} excluded ones than one control set of "
                    f"{len(top)} distinct features needs; lower the largest k"
                )
            overlap_needed, available = tier
            choice = _draw(hood, available, used, balance, neighbours, limit, log_bands, generator)
            used[choice] = in_set[choice] = True
            distance = float(hood.distance[choice])
            factor = next((b for b in bands if distance <= math.log(b) + 1e-12), None)
            widened += factor != band or overlap_needed < min_overlap
            f_ratio = math.exp(hood.log_f[choice]) if frequency[feature] > 0 else math.nan
            s_ratio = math.exp(hood.log_s[choice]) if size[feature] > 0 else math.nan
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
        neighbours=neighbours,
    )


def _draw(
    hood: _Neighbourhood,
    available: np.ndarray,
    used: np.ndarray,
    balance: np.ndarray,
    neighbours: int,
    limit: float,
    log_bands: Sequence[float],
    generator: np.random.Generator,
) -> int:
    """One of the ``neighbours`` nearest available candidates (ties included), a fresh one (not yet
    drawn for this k) when one is among them; looked for first in the quadrant of ratio sides that
    restores ``balance`` (within distance ``limit``), then on the side of the axis further from
    balance alone, then anywhere."""
    wanted = [
        None if sides is None or b == 0 else (sides == (b < 0))
        for sides, b in zip(hood.sides, balance, strict=True)
    ]
    order = sorted((a for a in range(2) if wanted[a] is not None), key=lambda a: -abs(int(balance[a])))
    preferences: list[np.ndarray] = []
    if len(order) == 2:
        preferences.append(wanted[0] & wanted[1])
    preferences.extend(wanted[a] for a in order)
    near = hood.distance <= limit
    for side in preferences:
        candidates = available & side & near
        if candidates.any():
            return _nearest(hood.distance, candidates, used, neighbours, log_bands, generator)
    return _nearest(hood.distance, available, used, neighbours, log_bands, generator)


def _nearest(
    distance: np.ndarray,
    candidates: np.ndarray,
    used: np.ndarray,
    neighbours: int,
    log_bands: Sequence[float],
    generator: np.random.Generator,
) -> int:
    """One of the ``neighbours`` nearest ``candidates`` (ties included), none beyond the smallest of
    ``log_bands`` holding the nearest; a fresh one (not ``used``) when one of them is."""
    ids = np.flatnonzero(candidates)
    d = distance[ids]
    cutoff = np.partition(d, min(neighbours, len(d)) - 1)[min(neighbours, len(d)) - 1]
    closest = float(d.min())
    reach = next((b for b in log_bands if closest <= b + 1e-12), math.inf)
    nearest = ids[(d <= cutoff) & (d <= reach)]
    first = ids[d == closest]
    if not used[first].any():  # the nearest itself first: it holds the median near 1
        return int(generator.choice(first))
    fresh = nearest[~used[nearest]]
    return int(generator.choice(fresh if len(fresh) else nearest))


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
    "BALANCE_BAND",
    "DEFAULT_BAND",
    "DEFAULT_DRAWS",
    "DEFAULT_NEIGHBOURS",
    "DEFAULT_WIDEN",
    "EXCLUDE_FACTOR",
    "MEDIAN_RANGE",
    "ControlMatch",
    "ControlSamplingError",
    "ControlSet",
    "MatchedControls",
    "ablation_size",
    "excluded_features",
    "sample_matched_controls",
    "sample_unmatched_controls",
]
