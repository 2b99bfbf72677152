"""Per-dimension statistics of a store's rows, accumulated block by block in float64."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class _Moments:
    """Count, mean and sum of squared deviations, merged across blocks (Chan et al.)."""

    count: np.ndarray | float
    mean: np.ndarray | float
    m2: np.ndarray | float

    def merge(self, values: np.ndarray, mask: np.ndarray | None = None) -> None:
        if mask is None:
            n = np.float64(values.shape[0])
            mean = values.mean(axis=0)
            m2 = ((values - mean) ** 2).sum(axis=0)
        else:
            n = mask.sum(axis=0).astype(np.float64)
            safe = np.where(mask, values, 0.0)
            mean = np.divide(safe.sum(axis=0), n, out=np.zeros_like(n), where=n > 0)
            m2 = (np.where(mask, values - mean, 0.0) ** 2).sum(axis=0)
        total = self.count + n
        delta = mean - self.mean
        with np.errstate(invalid="ignore", divide="ignore"):
            weight = np.where(total > 0, n / np.maximum(total, 1), 0.0)
        self.m2 = self.m2 + m2 + delta**2 * self.count * weight
        self.mean = self.mean + delta * weight
        self.count = total

    def std(self) -> np.ndarray | float:
        return np.sqrt(np.divide(self.m2, np.maximum(self.count, 1)))


@dataclass
class StatsAccumulator:
    d_model: int
    rows: int = 0
    dims: _Moments = field(init=False)
    norms: _Moments = field(init=False)
    minimum: np.ndarray = field(init=False)
    maximum: np.ndarray = field(init=False)
    nonfinite: np.ndarray = field(init=False)
    norm_min: float = np.inf
    norm_max: float = -np.inf

    def __post_init__(self) -> None:
        zeros = np.zeros(self.d_model)
        self.dims = _Moments(zeros.copy(), zeros.copy(), zeros.copy())
        self.norms = _Moments(0.0, 0.0, 0.0)
        self.minimum = np.full(self.d_model, np.inf)
        self.maximum = np.full(self.d_model, -np.inf)
        self.nonfinite = np.zeros(self.d_model, dtype=np.int64)

    def add(self, block: np.ndarray) -> None:
        if not block.shape[0]:
            return
        values = block.astype(np.float64)
        finite = np.isfinite(values)
        all_finite = bool(finite.all())
        self.nonfinite += (~finite).sum(axis=0)
        self.dims.merge(values, None if all_finite else finite)
        clean_low = values if all_finite else np.where(finite, values, np.inf)
        clean_high = values if all_finite else np.where(finite, values, -np.inf)
        self.minimum = np.minimum(self.minimum, clean_low.min(axis=0))
        self.maximum = np.maximum(self.maximum, clean_high.max(axis=0))
        rows_ok = finite.all(axis=1)
        norms = np.sqrt((np.where(finite, values, 0.0) ** 2).sum(axis=1))[rows_ok]
        if norms.shape[0]:
            self.norms.merge(norms[:, None])
            self.norm_min = min(self.norm_min, float(norms.min()))
            self.norm_max = max(self.norm_max, float(norms.max()))
        self.rows += block.shape[0]

    def result(self) -> dict[str, Any]:
        seen = self.dims.count > 0
        minimum = np.where(seen, self.minimum, np.nan)
        maximum = np.where(seen, self.maximum, np.nan)
        return {
            "rows": self.rows,
            "d_model": self.d_model,
            "mean": np.where(seen, self.dims.mean, np.nan),
            "std": np.where(seen, self.dims.std(), np.nan),
            "min": minimum,
            "max": maximum,
            "abs_max": np.maximum(np.abs(minimum), np.abs(maximum)),
            "nonfinite": self.nonfinite.copy(),
            "nonfinite_total": int(self.nonfinite.sum()),
            "norm": {
                "mean": float(np.ravel(self.norms.mean)[0]) if self.norm_max >= 0 else float("nan"),
                "std": float(np.ravel(self.norms.std())[0]) if self.norm_max >= 0 else float("nan"),
                "min": self.norm_min if self.norm_max >= 0 else float("nan"),
                "max": self.norm_max if self.norm_max >= 0 else float("nan"),
            },
        }
