"""Declarations of the built-in SAE variants. No torch here: ``build`` imports the modules lazily.

Coefficients are relative to a per-element mean squared error on activations normalised to
E[|x|] = sqrt(d_in) (see scircuits.plugins.saes.modules for the loss definitions).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from scircuits import SAEVariant

if TYPE_CHECKING:
    from scircuits import SparseAutoencoder


class _Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReLUHyperparameters(_Hyperparameters):
    l1: float = Field(
        default=3e-3, ge=0, description="L1 coefficient (activations weighted by decoder norms)"
    )
    decorrelation: float = Field(
        default=0.01,
        ge=0,
        description="Decorrelation coefficient (a penalty on correlated latents)",
    )
    decorrelation_tokens: int = Field(default=256, ge=2, description="tokens per batch used for the penalty")


class TopKHyperparameters(_Hyperparameters):
    k: int = Field(default=32, gt=0)
    auxk_alpha: float = Field(default=1 / 32, ge=0, description="AuxK loss coefficient")
    k_aux: int | None = Field(default=None, gt=0, description="dead latents used by AuxK (default d_in/2)")
    dead_tokens: int | None = Field(
        default=None,
        gt=0,
        description="training tokens without firing until AuxK treats a latent as dead; default: a "
        "tenth of the run's tokens, at most 1,000,000, at least 10 batches (docs/training.md)",
    )
    sparse: bool = Field(default=True, description="sparse decoder and encoder backward (False: dense eager)")


class BatchTopKHyperparameters(TopKHyperparameters):
    threshold_momentum: float = Field(
        default=0.99, ge=0, lt=1, description="running mean of the smallest kept activation"
    )


class JumpReLUHyperparameters(_Hyperparameters):
    l0: float = Field(default=2e-3, ge=0, description="L0 penalty coefficient")
    bandwidth: float = Field(
        default=0.05, gt=0, description="rectangle kernel width of the threshold gradient"
    )
    init_threshold: float = Field(default=0.05, gt=0)


class GatedHyperparameters(_Hyperparameters):
    l1: float = Field(default=3e-3, ge=0, description="L1 coefficient on the gate activations")


class BuiltinSAEVariant(SAEVariant):
    Hyperparameters: ClassVar[type[BaseModel]] = _Hyperparameters

    def build(
        self, d_in: int, d_sae: int, hparams: Mapping[str, Any] | BaseModel | None = None
    ) -> SparseAutoencoder:
        from .modules import build_module

        parsed = self.parse_hparams(hparams)
        return build_module(self.name, d_in, d_sae, parsed.model_dump())


class ReLUVariant(BuiltinSAEVariant):
    name = "relu"
    description = "ReLU SAE with an L1 penalty and a decorrelation penalty"
    saelens_architecture = "standard"
    Hyperparameters = ReLUHyperparameters
    reads_saelens_checkpoints = True
    validation_hparams: ClassVar[Mapping[str, Any]] = {"l1": 0.1}
    _prior_study: ClassVar[Mapping[str, Any]] = {
        "expansion": 8,
        "epochs": 20,
        "batch_size": 32,
        "lr": 1e-4,
        "hparams": {"l1": 1e-4, "decorrelation": 0.01},
    }
    # The configuration of the earlier study this project continues; "phase4" is its older name,
    # kept so that commands written with it still run.
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {"prior-study": _prior_study, "phase4": _prior_study}


class TopKVariant(BuiltinSAEVariant):
    name = "topk"
    default = True  # the family's default (docs/plugins.md, "Defaults")
    description = "TopK SAE (k latents per token) with the AuxK loss for dead latents"
    saelens_architecture = "topk"
    Hyperparameters = TopKHyperparameters
    reads_saelens_checkpoints = True
    validation_hparams: ClassVar[Mapping[str, Any]] = {"k": 3, "dead_tokens": 4096}

    def hparams_from_saelens_cfg(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        return {"k": cfg["k"]} if "k" in cfg else {}


class BatchTopKVariant(BuiltinSAEVariant):
    name = "batchtopk"
    description = "BatchTopK SAE (k latents per token on average) with a learned inference threshold"
    saelens_architecture = "jumprelu"  # saved as JumpReLU; SAELens jumprelu files load as jumprelu
    Hyperparameters = BatchTopKHyperparameters
    validation_hparams: ClassVar[Mapping[str, Any]] = {"k": 3, "dead_tokens": 4096}


class JumpReLUVariant(BuiltinSAEVariant):
    name = "jumprelu"
    description = "JumpReLU SAE: learned thresholds (straight-through estimator), L0 penalty"
    saelens_architecture = "jumprelu"
    Hyperparameters = JumpReLUHyperparameters
    reads_saelens_checkpoints = True
    # l0 0.1 with the unit-norm decoder (0.05 suited the free-norm one: MMCS 0.88 at init seed 1)
    validation_hparams: ClassVar[Mapping[str, Any]] = {"l0": 0.1, "init_threshold": 0.5, "bandwidth": 0.2}


class GatedVariant(BuiltinSAEVariant):
    name = "gated"
    description = "Gated SAE: separate gate and magnitude paths sharing encoder directions"
    saelens_architecture = "gated"
    Hyperparameters = GatedHyperparameters
    reads_saelens_checkpoints = True
    validation_hparams: ClassVar[Mapping[str, Any]] = {"l1": 0.3}


BUILTIN_VARIANTS: tuple[type[BuiltinSAEVariant], ...] = (
    ReLUVariant,
    TopKVariant,
    BatchTopKVariant,
    JumpReLUVariant,
    GatedVariant,
)
