"""The four built-in ways to edit SAE feature activations. torch is imported when one is applied."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from scircuits import Ablation, ConfigError, FeatureStats

if TYPE_CHECKING:
    import torch


def _edited_copy(acts: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``acts`` with columns ``indices`` of its last dimension replaced by ``values`` (broadcast)."""
    out = acts.clone()
    out[..., indices] = values.to(out.dtype)
    return out


def _require_stats(name: str, stats: FeatureStats | None, field: str) -> Any:
    value = None if stats is None else getattr(stats, field)
    if value is None:
        raise ConfigError(
            f"the {name!r} ablation needs feature statistics ({field}) and was given none: pass "
            "stats=FeatureStats(...) (`scircuits ablate` and `run` compute them from the SAE's features "
            "on the evaluation examples)"
        )
    return value


class ZeroAblation(Ablation):
    name = "zero"
    default = True  # the family's default (docs/plugins.md, "Defaults")
    description = "Set the features to 0."

    def apply(self, acts, indices, stats=None, options=None, generator=None):
        import torch

        return _edited_copy(acts, indices, torch.zeros((), dtype=acts.dtype, device=acts.device))


class MeanAblation(Ablation):
    name = "mean"
    companion = True  # swept beside the main ablation by default
    description = "Replace the features by their mean activation over the benchmark's tokens."

    def apply(self, acts, indices, stats=None, options=None, generator=None):
        mean = _require_stats(self.name, stats, "mean")
        return _edited_copy(acts, indices, mean.to(acts.device)[indices])


class ResampleOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int = 0


class ResampleAblation(Ablation):
    name = "resample"
    description = (
        "Replace the features, at every token, by their values at a random token of other examples (seeded)."
    )
    Options = ResampleOptions

    def apply(self, acts, indices, stats=None, options=None, generator=None):
        import torch

        samples = _require_stats(self.name, stats, "samples")
        opts = self.parse_options(options)
        if generator is None:
            generator = torch.Generator().manual_seed(opts.seed)
        n_rows = acts[..., 0].numel()
        rows = torch.randint(0, samples.shape[0], (n_rows,), generator=generator)
        picked = samples[rows][:, indices.to(samples.device)].to(acts.device)
        values = picked.reshape(*acts.shape[:-1], len(indices))
        return _edited_copy(acts, indices, values)


class ClampOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: float | None = Field(default=None, description="set the features to this value")
    scale: float | None = Field(default=None, description="multiply the features by this factor")

    @model_validator(mode="after")
    def one_of(self) -> ClampOptions:
        if (self.value is None) == (self.scale is None):
            raise ValueError("give exactly one of value (clamp to it) or scale (multiply by it)")
        return self


class ClampAblation(Ablation):
    name = "clamp"
    description = "Clamp the features to a value (value=V) or scale them by a factor (scale=S)."
    Options = ClampOptions

    def parse_options(self, raw: Mapping[str, Any] | BaseModel | None = None) -> BaseModel:
        return super().parse_options(raw if raw else {"value": 0.0})

    def apply(self, acts, indices, stats=None, options=None, generator=None):
        import torch

        opts = self.parse_options(options)
        if opts.value is not None:
            return _edited_copy(acts, indices, torch.tensor(opts.value, dtype=acts.dtype, device=acts.device))
        return _edited_copy(acts, indices, acts[..., indices] * opts.scale)
