"""SAE variants: the plugin-facing declaration. The torch module base is in ``sae_module``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from scircuits.platform.contract.options import defaults, parse_options

if TYPE_CHECKING:
    from scircuits.platform.contract.sae_module import SparseAutoencoder


class NoHyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SAEVariant:
    """Base of every SAE variant plugin.

    ``saelens_architecture`` is how SAELens spells the saved architecture (``standard``, ``topk``,
    ``jumprelu``, ``gated``). ``Hyperparameters`` is a pydantic model (``extra="forbid"``).
    ``build`` must import torch lazily so that listing plugins stays fast.
    """

    name: str = ""
    description: str = ""
    saelens_architecture: str = ""
    Hyperparameters: ClassVar[type[BaseModel]] = NoHyperparameters

    def parse_hparams(self, raw: Mapping[str, Any] | BaseModel | None = None) -> BaseModel:
        return parse_options(self.Hyperparameters, raw, f"SAE variant {self.name!r} hyperparameters")

    def build(
        self, d_in: int, d_sae: int, hparams: Mapping[str, Any] | BaseModel | None = None
    ) -> SparseAutoencoder:
        raise NotImplementedError

    def facts(self) -> dict[str, Any]:
        return {
            "saelens_architecture": self.saelens_architecture,
            "hyperparameters": defaults(self.Hyperparameters),
        }
