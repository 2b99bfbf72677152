"""Which tokens an SAE is fitted and scored on: attention sinks and outlier-norm tokens left out.

In a language model's residual stream a few tokens carry almost all of the squared norm: on the
default run's store (SmolLM2-135M, layer 15) the 2,000 position-0 tokens (attention sinks, mean
norm ~26,000 against a median of ~170) and ~200 position-1 tokens hold 99.8% of sum |x|^2. An SAE
fitted on every token spends its capacity and its input scale on them. The rule ``outliers``
(the default) leaves out, for fitting, the input scale and every reconstruction metric:

- every position-0 row, when position 0 is a sink in this store: the median norm of the
  position-0 rows exceeds ``factor`` times the median norm of the other rows;
- any row whose norm exceeds ``factor`` times the median norm of the rows at positions > 0.

A store without sinks (a small synthetic model) keeps its position-0 rows, and loses only rows that
really are outlying. ``none`` keeps every row. The rule, its thresholds (in raw units) and the
counts are recorded in the checkpoint (``scircuits.json``: ``token_exclusion``), so a study applies
the same cut to its own tokens (``TokenExclusion.kept``). The SAE itself is still applied to every
token when it is spliced into the model; only what it is fitted and scored on changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import torch

    from scircuits.store import ActivationStore

ExclusionRule = Literal["outliers", "none"]
EXCLUSION_RULES: tuple[str, ...] = ("outliers", "none")
DEFAULT_OUTLIER_FACTOR = 10.0


class TokenExclusion(BaseModel):
    """The rule as applied to one store: what it leaves out and why (raw activation units)."""

    model_config = ConfigDict(extra="forbid")

    rule: ExclusionRule
    factor: float | None = None
    median_norm: float | None = None  # median |x| of the rows at positions > 0 (all rows if none)
    norm_cutoff: float | None = None  # rows with |x| above this are left out
    position0: bool = False  # every position-0 row is left out (position 0 is a sink here)
    position0_median_norm: float | None = None
    rows: int = 0  # rows of the store
    excluded: int = 0  # rows left out, for either reason
    excluded_position0: int = 0  # position-0 rows left out (as sinks or by norm)
    excluded_by_norm: int = 0  # rows at positions > 0 left out by norm

    @property
    def active(self) -> bool:
        return self.position0 or self.norm_cutoff is not None

    def kept(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Bool mask (same shape as ``positions``) of the tokens the rule keeps; ``x`` (..., d) raw."""
        import torch

        keep = torch.ones_like(positions, dtype=torch.bool)
        if self.position0:
            keep &= positions != 0
        if self.norm_cutoff is not None:
            keep &= x.float().norm(dim=-1) <= self.norm_cutoff
        return keep

    def describe(self) -> str:
        if self.rule == "none":
            return "every token kept (--exclude-tokens none)"
        parts = []
        if self.position0:
            parts.append(
                f"position 0 (a sink here: median |x| {self.position0_median_norm:.4g} > {self.factor:g} x "
                f"{self.median_norm:.4g})"
            )
        if self.norm_cutoff is not None:
            median = f"{self.factor:g} x the median {self.median_norm:.4g}"
            parts.append(f"|x| > {self.norm_cutoff:.4g} ({median})")
        share = self.excluded / self.rows if self.rows else 0.0
        what = " or ".join(parts) if parts else "nothing matched"
        return f"{self.excluded} of {self.rows} tokens left out ({share:.2%}): {what}"


def token_exclusion_of(meta: dict[str, Any] | None) -> TokenExclusion | None:
    """The rule a checkpoint recorded (``scircuits.json``), or None (older or foreign checkpoints)."""
    found = (meta or {}).get("token_exclusion")
    return TokenExclusion.model_validate(found) if isinstance(found, dict) else None


def row_norms(store: ActivationStore, *, rank: int = 0, world_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """|x| and position of every row of the store blocks ``rank`` reads (every ``world_size``-th
    block); zeros elsewhere, so the ranks' arrays add up to the whole store's."""
    norms = np.zeros(store.n_tokens, dtype=np.float32)
    positions = np.zeros(store.n_tokens, dtype=np.int64)
    for start, stop in store.block_bounds()[rank::world_size]:
        norms[start:stop] = np.linalg.norm(store.read_rows(start, stop), axis=1)
        positions[start:stop] = store.read_ids("positions", start, stop)
    return norms, positions


def fit_exclusion(
    store: ActivationStore,
    rule: ExclusionRule,
    factor: float = DEFAULT_OUTLIER_FACTOR,
    *,
    measured: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[TokenExclusion, np.ndarray]:
    """Apply ``rule`` to ``store`` (one pass over its rows, or ``measured``: what ``row_norms`` gives
    for the whole store, e.g. summed over the ranks): the record and the excluded row indices."""
    if rule == "none":
        return TokenExclusion(rule="none", rows=store.n_tokens), np.empty(0, dtype=np.int64)
    norms, positions = measured if measured is not None else row_norms(store)
    return exclusion_from_norms(norms, positions, rule, factor)


def exclusion_from_norms(
    norms: np.ndarray, positions: np.ndarray, rule: ExclusionRule, factor: float = DEFAULT_OUTLIER_FACTOR
) -> tuple[TokenExclusion, np.ndarray]:
    """Apply ``rule`` to rows given by their norms |x| and positions: the record and the excluded row
    indices (what ``fit_exclusion`` does for a store, here for any rows, e.g. a study's own tokens)."""
    if rule == "none":
        return TokenExclusion(rule="none", rows=len(norms)), np.empty(0, dtype=np.int64)
    at_zero = positions == 0
    later = norms[~at_zero] if (~at_zero).any() else norms
    median = float(np.median(later)) if later.size else 0.0
    cutoff = factor * median if median > 0 else None
    zero_median = float(np.median(norms[at_zero])) if at_zero.any() else None
    sink = cutoff is not None and zero_median is not None and (~at_zero).any() and zero_median > cutoff
    by_norm = norms > cutoff if cutoff is not None else np.zeros_like(at_zero)
    excluded = by_norm | (at_zero & sink)
    record = TokenExclusion(
        rule=rule,
        factor=factor,
        median_norm=median,
        norm_cutoff=cutoff,
        position0=bool(sink),
        position0_median_norm=zero_median,
        rows=len(norms),
        excluded=int(excluded.sum()),
        excluded_position0=int((excluded & at_zero).sum()),
        excluded_by_norm=int((by_norm & ~at_zero).sum()),
    )
    return record, np.flatnonzero(excluded).astype(np.int64)


__all__ = [
    "DEFAULT_OUTLIER_FACTOR",
    "EXCLUSION_RULES",
    "ExclusionRule",
    "TokenExclusion",
    "exclusion_from_norms",
    "fit_exclusion",
    "row_norms",
    "token_exclusion_of",
]
