"""Ablations: how the activations of chosen SAE features are edited inside the running model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from scircuits.platform.contract.options import defaults, parse_options

if TYPE_CHECKING:
    import torch


@dataclass
class FeatureStats:
    """Per-feature statistics over the benchmark's tokens, used by mean and resample ablations.

    ``mean``: (d_sae,) mean activation of each feature over all tokens (zeros included).
    ``samples``: (n, d_sae) feature activations of n tokens drawn from other examples, the pool
    that ``resample`` draws replacement values from.
    """

    mean: torch.Tensor
    samples: torch.Tensor | None = None


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Ablation:
    """Base of every ablation plugin.

    ``apply`` gets feature activations ``acts`` of shape (..., d_sae), the feature ``indices`` to edit
    (1-D long tensor), the stored ``stats``, parsed ``options`` and a seeded ``generator``; it returns a
    new tensor (the input is never modified in place) equal to ``acts`` outside ``indices``.
    ``indices`` are on ``acts.device`` (a GPU with ``--device cuda``); the tensors of ``stats`` stay
    on the CPU, and the generator is a CPU one.
    """

    # True on the one object used when the config names none (docs/plugins.md, "Defaults").
    default: ClassVar[bool] = False
    # True: swept over top_k beside the main ablation unless the config names ``sweep_also``.
    companion: ClassVar[bool] = False
    name: str = ""
    description: str = ""
    Options: ClassVar[type[BaseModel]] = NoOptions

    def parse_options(self, raw: Mapping[str, Any] | BaseModel | None = None) -> BaseModel:
        return parse_options(self.Options, raw, f"ablation {self.name!r} options")

    def apply(
        self,
        acts: torch.Tensor,
        indices: torch.Tensor,
        stats: FeatureStats | None = None,
        options: Mapping[str, Any] | BaseModel | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def facts(self) -> dict[str, Any]:
        return {"options": defaults(self.Options)}
