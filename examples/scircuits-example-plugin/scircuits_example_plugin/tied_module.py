"""The torch module of the tied-weight ReLU SAE (imported by ``TiedReLUVariant.build``).

While training, the encoder is ``W_dec`` transposed, so the SAE has one weight matrix. ``W_enc`` is a
buffer that holds the encoder once it is frozen: ``fold_input_scale`` (called before saving) scales
encoder and decoder differently, which unties them, and a loaded checkpoint uses the encoder it saved.
"""

from __future__ import annotations

from typing import Any

import torch

from scircuits import SparseAutoencoder, TrainOutput, encoder_product, fired_counts, mse_per_element


class TiedReLUSAE(SparseAutoencoder):
    variant = "tied-relu"
    saelens_architecture = "standard"

    def __init__(self, d_in: int, d_sae: int, hparams: dict[str, Any] | None = None) -> None:
        super().__init__(d_in, d_sae, hparams)
        encoder = self.W_enc.detach().clone()
        del self.W_enc  # not a parameter: tied to W_dec while training
        self.register_buffer("W_enc", encoder)
        self.tied = True

    def encoder_weight(self) -> torch.Tensor:
        return self.W_dec.t() if self.tied else self.W_enc

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        return encoder_product(x - self.b_dec, self.encoder_weight(), self.encoder_bf16) + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.pre_activation(x).relu()

    def train_forward(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None) -> TrainOutput:
        f = self.encode(x)
        x_hat = self.decode(f)
        mse = mse_per_element(x, x_hat)
        l1 = (f * self.W_dec.norm(dim=1)).sum(dim=-1).mean()
        loss = mse + self.hparams["l1"] * l1
        with torch.no_grad():
            l0 = float((f > 0).sum(dim=-1).float().mean())
        return TrainOutput({"mse": mse, "l1": l1, "loss": loss}, x_hat, fired_counts(f), l0)

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        if self.tied:
            self.W_enc.copy_(self.W_dec.t())
            self.tied = False
        super().fold_input_scale(scale)

    @torch.no_grad()
    def load_saelens_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        super().load_saelens_tensors(tensors)
        self.tied = False
