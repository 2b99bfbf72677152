"""An SAE variant from a third party: a ReLU SAE whose encoder is its decoder's transpose.

Registered through ``register_sae_variants`` like the built-in variants, and written only against
the names ``scircuits`` exports. The torch module lives in ``tied_module`` and is imported when a
variant is built, so listing plugins does not import torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from scircuits import SAEVariant, hookimpl


class TiedReLUHyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    l1: float = Field(
        default=3e-3, ge=0, description="L1 coefficient (activations weighted by decoder norms)"
    )


class TiedReLUVariant(SAEVariant):
    name = "tied-relu"
    description = "ReLU SAE with tied weights: encoder = decoder transposed (example plugin)"
    saelens_architecture = "standard"  # saved with its (folded) encoder: SAELens reads it as standard
    Hyperparameters = TiedReLUHyperparameters
    validation_hparams: ClassVar[Mapping[str, Any]] = {"l1": 0.1}

    def build(self, d_in: int, d_sae: int, hparams: Mapping[str, Any] | BaseModel | None = None):
        from .tied_module import TiedReLUSAE

        return TiedReLUSAE(d_in, d_sae, self.parse_hparams(hparams).model_dump())


@hookimpl
def register_sae_variants(register):
    register(TiedReLUVariant())
