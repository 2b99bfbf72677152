"""SAE quality metrics, as defined in docs/metrics.md, accumulated over batches.

- FVU = sum |x - x_hat|^2 / sum |x - mean(x)|^2 (mean over all evaluated tokens); explained
  variance = 1 - FVU.
- L0 = mean number of active latents per token.
- dead fraction = fraction of latents that never fire on the evaluated tokens (``tokens`` says how
  many: a dead fraction means little over fewer tokens than 1 / a rare latent's frequency).
- rare fraction = fraction of latents that fire, but on fewer than ``RARE_FREQUENCY`` (1e-4) of the
  evaluated tokens; apart from the dead ones. Over fewer than 10,000 tokens no latent can be rare.
- MSE = mean over tokens and dimensions of (x - x_hat)^2, in the units of the raw activations.
- relative error = mean over tokens of |x - x_hat|^2 / |x|^2. FVU weighs tokens and dimensions by
  their variance, so in a residual stream with a few massive dimensions (SmolLM2's dimension 507
  holds ~98% of the variance at layer 15) FVU mostly measures those; the per-token relative error
  weighs every token alike. ``top_dim_variance_share`` says how dominated FVU is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

# A latent firing on fewer than this share of tokens is "rare" (apart from "dead": never fired).
RARE_FREQUENCY = 1e-4


@dataclass
class ReconstructionStats:
    d_sae: int
    tokens: int = 0
    d_in: int = 0
    sum_sq_error: float = 0.0
    sum_sq: float = 0.0
    sum_x: torch.Tensor | None = None
    sum_x2: torch.Tensor | None = None
    sum_relative_error: float = 0.0
    active_total: float = 0.0
    fired: torch.Tensor | None = field(default=None, repr=False)  # (d_sae,) tokens each latent fired on

    def update(self, x: torch.Tensor, x_hat: torch.Tensor, acts: torch.Tensor) -> None:
        x64, x_hat64 = x.double(), x_hat.double()
        self.tokens += x.shape[0]
        self.d_in = x.shape[1]
        self.sum_sq_error += float((x64 - x_hat64).pow(2).sum())
        self.sum_sq += float(x64.pow(2).sum())
        token_error = (x64 - x_hat64).pow(2).sum(dim=1)
        self.sum_relative_error += float((token_error / x64.pow(2).sum(dim=1).clamp_min(1e-30)).sum())
        batch_sum = x64.sum(dim=0).cpu()
        self.sum_x = batch_sum if self.sum_x is None else self.sum_x + batch_sum
        batch_sq = x64.pow(2).sum(dim=0).cpu()
        self.sum_x2 = batch_sq if self.sum_x2 is None else self.sum_x2 + batch_sq
        active = acts > 0
        self.active_total += float(active.sum())
        batch_fired = active.sum(dim=0).to("cpu", torch.int64)
        self.fired = batch_fired if self.fired is None else (self.fired + batch_fired)

    def merge(self, other: ReconstructionStats) -> None:
        if other.tokens == 0:
            return
        if self.tokens == 0:
            self.__dict__.update(other.__dict__)
            return
        self.tokens += other.tokens
        self.sum_sq_error += other.sum_sq_error
        self.sum_sq += other.sum_sq
        self.sum_x = self.sum_x + other.sum_x  # type: ignore[operator]
        self.sum_x2 = self.sum_x2 + other.sum_x2  # type: ignore[operator]
        self.sum_relative_error += other.sum_relative_error
        self.active_total += other.active_total
        self.fired = self.fired + other.fired  # type: ignore[operator]

    def total_variance(self) -> float:
        if self.tokens == 0 or self.sum_x is None:
            return 0.0
        return self.sum_sq - float(self.sum_x.pow(2).sum()) / self.tokens

    def result(self) -> dict[str, Any]:
        if self.tokens == 0:
            return {"tokens": 0}
        variance = self.total_variance()
        fvu = self.sum_sq_error / variance if variance > 0 else float("nan")
        return {
            "tokens": self.tokens,
            "fvu": fvu,
            "explained_variance": 1.0 - fvu,
            "l0": self.active_total / self.tokens,
            **self.latent_usage(),
            "mse": self.sum_sq_error / (self.tokens * self.d_in),
            "relative_error": self.sum_relative_error / self.tokens,
            "top_dim_variance_share": self.top_dim_variance_share(),
        }

    def latent_usage(self) -> dict[str, float]:
        """Dead (never fired) and rare (fired on fewer than ``RARE_FREQUENCY`` of the tokens) fractions."""
        if self.fired is None or self.tokens == 0:
            return {"dead_fraction": float("nan"), "rare_fraction": float("nan")}
        fired = self.fired.double()
        rare = (fired > 0) & (fired < RARE_FREQUENCY * self.tokens)
        return {
            "dead_fraction": float((fired == 0).double().mean()),
            "rare_fraction": float(rare.double().mean()),
        }

    def top_dim_variance_share(self) -> float:
        if self.sum_x is None or self.sum_x2 is None:
            return float("nan")
        per_dim = self.sum_x2 - self.sum_x.pow(2) / self.tokens
        total = float(per_dim.sum())
        return float(per_dim.max()) / total if total > 0 else float("nan")


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """FVU of one tensor of tokens (n, d)."""
    x64 = x.double()
    return float((x64 - x_hat.double()).pow(2).sum() / (x64 - x64.mean(dim=0)).pow(2).sum())


def mean_max_cosine(learned: torch.Tensor, true: torch.Tensor, threshold: float = 0.9) -> dict[str, float]:
    """For each true atom (rows of ``true``), the best cosine similarity among the learned rows.

    Returns ``mmcs`` (mean over true atoms) and ``recovered`` (fraction with a best cosine above
    ``threshold``).
    """
    a = learned / learned.norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = true / true.norm(dim=1, keepdim=True).clamp_min(1e-12)
    best = (b @ a.t()).max(dim=1).values
    return {"mmcs": float(best.mean()), "recovered": float((best > threshold).float().mean())}
