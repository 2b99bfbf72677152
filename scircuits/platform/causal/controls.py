"""Matched random controls for a top-k feature set.

A control set has as many features as the top-k set. Each of its features stands for one top
feature and is drawn (uniformly, seeded) among the features that

- are not in the top-k set and not already in this control set;
- fire on the evaluation tokens (frequency > 0);
- are active on at least ``min_overlap`` of the evaluation examples the top feature is active on
  (the same examples);
- have a firing frequency within ``band`` of the top feature's: ratio in [1/band, band];
- have an ablation size (sum over the evaluation tokens of activation x decoder-row norm) within
  ``band`` of the top feature's.

When no feature qualifies, the band widens step by step through ``widen`` (the band factors tried
after ``band``); past the last step the overlap requirement drops to "active on any example" and
the band becomes unbounded. The band and overlap actually used are recorded for every drawn feature.
When even that leaves no candidate (fewer eligible features than the set needs), the draw fails
with ``ControlSamplingError`` rather than returning a smaller set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

DEFAULT_DRAWS = 20
DEFAULT_BAND = 2.0  # ratios within 0.5-2x
DEFAULT_WIDEN = (3.0, 4.0, 8.0, 16.0)


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

    @property
    def ids(self) -> list[list[int]]:
        """The control feature ids, one list per draw (what results.json saves)."""
        return [s.features for s in self.sets]


def ablation_size(activation_sums: np.ndarray, decoder_norms: np.ndarray) -> np.ndarray:
    """Per-feature ablation size: (sum over evaluation tokens of the activation) x decoder-row norm."""
    return np.asarray(activation_sums, dtype=np.float64) * np.asarray(decoder_norms, dtype=np.float64)


def _ratio(values: np.ndarray, reference: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return values / reference if reference > 0 else np.full_like(values, np.nan)


def _within(ratio: np.ndarray, band: float | None, reference: float) -> np.ndarray:
    if band is None:
        return np.ones_like(ratio, dtype=bool)
    if reference <= 0:  # a top feature of size 0 is matched by features of size 0
        return np.zeros_like(ratio, dtype=bool)
    return (ratio >= 1.0 / band) & (ratio <= band)


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
    rng: np.random.Generator | int = 0,
) -> MatchedControls:
    """``draws`` control sets matched to the features ``top``.

    ``frequency`` (d_sae,): firing frequency per token; ``size`` (d_sae,): ablation size (see
    ``ablation_size``); ``example_activity`` (n_examples, d_sae) bool: feature active anywhere in the
    example; ``rng``: a numpy generator or a seed.
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
    n_examples = max(activity.shape[0], 1)
    overlap_counts = activity.T.astype(np.int64) @ activity.astype(np.int64)[:, top]  # (d_sae, len(top))
    # per top feature: the ladder of eligibility masks, narrowest first
    ladder: list[list[tuple[float | None, float, np.ndarray]]] = []
    for j, feature in enumerate(top):
        own = int(activity[:, feature].sum())
        overlap = overlap_counts[:, j] / own if own else np.zeros(d_sae)
        f_ratio, s_ratio = _ratio(frequency, frequency[feature]), _ratio(size, size[feature])
        steps: list[tuple[float | None, float, np.ndarray]] = []
        for factor in (band, *widen):
            mask = (
                base
                & (overlap >= min_overlap)
                & _within(f_ratio, factor, frequency[feature])
                & _within(s_ratio, factor, size[feature])
            )
            steps.append((factor, min_overlap, mask))
        steps.append((None, 1.0 / n_examples if own else 0.0, base & ((overlap > 0) | (own == 0))))
        ladder.append(steps)

    sets: list[ControlSet] = []
    widened = 0
    for _ in range(draws):
        taken = np.zeros(d_sae, dtype=bool)
        matches: list[ControlMatch] = []
        for j, feature in enumerate(top):
            found = _narrowest_step(ladder[j], taken)
            if found is None:
                raise ControlSamplingError(
                    f"no control feature left for top feature {feature}: fewer active features outside "
                    f"the top {len(top)} than one control set needs"
                )
            step, factor, overlap_needed, candidates = found
            widened += step > 0
            choice = int(generator.choice(candidates))
            taken[choice] = True
            matches.append(
                ControlMatch(
                    top=feature,
                    control=choice,
                    band=factor,
                    min_overlap=overlap_needed,
                    frequency_ratio=float(frequency[choice] / frequency[feature])
                    if frequency[feature] > 0
                    else math.nan,
                    size_ratio=float(size[choice] / size[feature]) if size[feature] > 0 else math.nan,
                )
            )
        sets.append(ControlSet(features=[m.control for m in matches], matches=matches))
    return MatchedControls(
        top=top,
        sets=sets,
        band=band,
        widen=list(widen),
        min_overlap=min_overlap,
        seed=seed,
        widened=widened,
    )


def _narrowest_step(
    steps: list[tuple[float | None, float, np.ndarray]], taken: np.ndarray
) -> tuple[int, float | None, float, np.ndarray] | None:
    """(index, band, overlap, candidate ids) of the first step with a candidate not yet taken."""
    for index, (factor, overlap_needed, mask) in enumerate(steps):
        candidates = np.flatnonzero(mask & ~taken)
        if len(candidates):
            return index, factor, overlap_needed, candidates
    return None


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
    "ControlMatch",
    "ControlSamplingError",
    "ControlSet",
    "MatchedControls",
    "ablation_size",
    "sample_matched_controls",
    "sample_unmatched_controls",
]
