"""SAE variants: the plugin-facing declaration. The torch module base is in ``sae_module``.

Everything the core needs to know about one variant lives here, on the variant: its hyperparameters,
its named training presets, the settings of the planted-dictionary check, and how it reads a SAELens
checkpoint that has no scircuits.json.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from scircuits.platform.contract.errors import ConfigError, ScircuitsError
from scircuits.platform.contract.options import defaults, parse_options

if TYPE_CHECKING:
    from scircuits.platform.contract.sae_module import SparseAutoencoder

# what the platform calls on an SAE (scircuits.SparseAutoencoder has all of it)
SAE_INTERFACE = ("d_in", "d_sae", "W_dec", "encode", "decode", "train_forward", "saelens_tensors")


class NoHyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SAEVariant:
    """Base of every SAE variant plugin.

    ``saelens_architecture`` is how SAELens spells the saved architecture (``standard``, ``topk``,
    ``jumprelu``, ``gated``). ``Hyperparameters`` is a pydantic model (``extra="forbid"``).
    ``build`` must import torch lazily so that listing plugins stays fast.
    """

    # True on the one object used when the config names none (docs/plugins.md, "Defaults").
    default: ClassVar[bool] = False
    name: str = ""
    description: str = ""
    saelens_architecture: str = ""
    Hyperparameters: ClassVar[type[BaseModel]] = NoHyperparameters
    # Named training settings: TrainConfig fields, "hparams" merged under the ones given.
    # ``scircuits train --preset NAME`` uses them (and selects this variant when --sae is not given).
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    # Hyperparameters for `scircuits validate sae` (planted dictionary, true L0 about 3).
    validation_hparams: ClassVar[Mapping[str, Any]] = {}
    # This variant reads SAELens checkpoints of its ``saelens_architecture`` that have no
    # scircuits.json (at most one registered variant per architecture should say so).
    reads_saelens_checkpoints: ClassVar[bool] = False

    def hparams_from_saelens_cfg(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        """Hyperparameters read from a SAELens cfg.json (checkpoints without scircuits.json)."""
        return {}

    def parse_hparams(self, raw: Mapping[str, Any] | BaseModel | None = None) -> BaseModel:
        return parse_options(self.Hyperparameters, raw, f"SAE variant {self.name!r} hyperparameters")

    def build(
        self, d_in: int, d_sae: int, hparams: Mapping[str, Any] | BaseModel | None = None
    ) -> SparseAutoencoder:
        raise NotImplementedError

    def make(
        self, d_in: int, d_sae: int, hparams: Mapping[str, Any] | BaseModel | None = None
    ) -> SparseAutoencoder:
        """``build`` as the platform calls it (do not override): its result checked to be a
        SparseAutoencoder of the asked sizes, a mistake one ConfigError naming the variant."""
        where = f"SAE variant {self.name!r}"
        try:
            sae = self.build(d_in, d_sae, hparams)
        except (ScircuitsError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise ConfigError(f"{where} failed to build: {type(exc).__name__}: {exc}") from exc
        missing = [a for a in SAE_INTERFACE if not hasattr(sae, a)]
        if missing:
            raise ConfigError(
                f"{where}: build returned a {type(sae).__name__}, not a scircuits.SparseAutoencoder "
                f"(it has no {', '.join(missing)}); subclass scircuits.SparseAutoencoder"
            )
        if (getattr(sae, "d_in", None), getattr(sae, "d_sae", None)) != (d_in, d_sae):
            raise ConfigError(
                f"{where}: build({d_in}, {d_sae}) returned an SAE of d_in {sae.d_in}, d_sae {sae.d_sae}"
            )
        return sae

    def facts(self) -> dict[str, Any]:
        return {
            "saelens_architecture": self.saelens_architecture,
            "hyperparameters": defaults(self.Hyperparameters),
        }
