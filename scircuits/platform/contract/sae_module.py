"""The torch base of every SAE: encode, decode, forward and a loss made of named terms.

Weights use SAELens' names and shapes (``W_enc`` d_in x d_sae, ``W_dec`` d_sae x d_in, ``b_enc``,
``b_dec``) so a checkpoint is a plain dict of these tensors. Like SAELens (``apply_b_dec_to_input``),
the encoder sees ``x - b_dec``.

Training works on normalised activations (``x * scale``); ``fold_input_scale`` folds that scale into
the weights so that a saved SAE applies to raw activations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class TrainOutput:
    """What one training forward pass produced: loss terms (``"loss"`` is the total), the
    reconstruction, and how often each latent fired in the batch (for dead-latent tracking)."""

    terms: dict[str, torch.Tensor]
    x_hat: torch.Tensor
    fired: torch.Tensor  # (d_sae,) int64 counts
    l0: float
    extra: dict[str, Any] = field(default_factory=dict)


class SparseAutoencoder(nn.Module):
    """Subclasses implement ``encode`` and ``train_forward``; ``decode`` is linear unless overridden.

    Class attributes a subclass sets: ``variant`` (our name), ``saelens_architecture`` (how SAELens
    spells it), ``unit_norm_decoder`` (decoder rows kept at unit norm during training).
    """

    variant: str = ""
    saelens_architecture: str = "standard"
    unit_norm_decoder: bool = False
    # AuxK-style losses: ``uses_dead_mask`` asks the trainer for a dead mask in ``train_forward``;
    # ``dead_tokens`` fixes the window (latents silent for this many training tokens count as dead),
    # None leaves it to the trainer (relative to the run's length, docs/training.md)
    uses_dead_mask: bool = False
    dead_tokens: int | None = None

    def __init__(self, d_in: int, d_sae: int, hparams: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.d_in = d_in
        self.d_sae = d_sae
        self.hparams: dict[str, Any] = dict(hparams or {})
        self.encoder_bf16 = False  # bfloat16 encoder product (float32 weights and accumulation)
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.reset_parameters()

    # -- initialisation ----------------------------------------------------------------------

    decoder_init_norm: float = 0.1
    # The encoder starts as the decoder's transpose times this. Adam's steps have a fixed size, so
    # the encoder's starting scale sets how fast it moves relative to itself.
    encoder_init_scale: float = 1.0

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random unit-direction decoder rows (scaled), encoder tied to the decoder's transpose."""
        nn.init.kaiming_uniform_(self.W_dec)
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))
        norm = 1.0 if self.unit_norm_decoder else self.decoder_init_norm
        self.W_dec.mul_(norm)
        self.W_enc.copy_(self.W_dec.t() * self.encoder_init_scale)
        self.b_enc.zero_()
        self.b_dec.zero_()

    # -- inference ---------------------------------------------------------------------------

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        return encoder_product(x - self.b_dec, self.W_enc, self.encoder_bf16) + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations (..., d_sae) of inputs (..., d_in)."""
        raise NotImplementedError

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    # -- training ----------------------------------------------------------------------------

    def train_forward(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None) -> TrainOutput:
        raise NotImplementedError

    def loss(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Named loss terms; ``"loss"`` is the total that training minimises."""
        return self.train_forward(x, dead_mask).terms

    @torch.no_grad()
    def after_step(self, out: TrainOutput) -> None:
        """Called after each optimiser step (e.g. to renormalise the decoder or update a threshold)."""
        if self.unit_norm_decoder:
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def before_step(self) -> None:
        """Called between backward and the optimiser step: with unit-norm decoder rows, the part of
        each row's gradient parallel to the row is removed (it would only change the norm)."""
        if self.unit_norm_decoder and self.W_dec.grad is not None:
            rows = self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
            parallel = (self.W_dec.grad * rows).sum(dim=1, keepdim=True)
            self.W_dec.grad.sub_(parallel * rows)

    def training_state(self) -> dict[str, torch.Tensor]:
        """Non-parameter state that training needs to resume exactly (buffers are in state_dict)."""
        return {}

    # -- checkpoint format -------------------------------------------------------------------

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Make an SAE trained on ``x * scale`` apply to raw ``x``: the encoder's pre-activations and
        the latents are unchanged; the reconstruction is divided by ``scale``."""
        self.W_enc.mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        """The weights as SAELens names them for ``saelens_architecture``."""
        return {"W_enc": self.W_enc, "W_dec": self.W_dec, "b_enc": self.b_enc, "b_dec": self.b_dec}

    @torch.no_grad()
    def load_saelens_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        expected = set(self.saelens_tensors())
        if set(tensors) != expected:
            raise ValueError(f"expected tensors {sorted(expected)}, got {sorted(tensors)}")
        for name, value in tensors.items():
            self.load_saelens_tensor(name, value)

    def load_saelens_tensor(self, name: str, value: torch.Tensor) -> None:
        self._assign(name, value)

    def _assign(self, name: str, value: torch.Tensor) -> None:
        target = getattr(self, name)
        if tuple(target.shape) != tuple(value.shape):
            raise ValueError(f"{name}: expected shape {tuple(target.shape)}, got {tuple(value.shape)}")
        target.data.copy_(value.to(target.dtype))

    @torch.no_grad()
    def absorb_input_shift(self, shift: torch.Tensor) -> None:
        """Add ``shift`` (d_sae,) to every encoder pre-activation: how a checkpoint saved with
        ``apply_b_dec_to_input=False`` is made to fit this module, which always subtracts b_dec."""
        self.b_enc.add_(shift)

    def saelens_cfg(self) -> dict[str, Any]:
        """Architecture-specific cfg.json fields (e.g. ``k`` for topk)."""
        return {}


def encoder_product(x: torch.Tensor, w: torch.Tensor, bf16: bool) -> torch.Tensor:
    """``x @ w``, optionally computed in bfloat16 (float32 result). Gradients flow in float32 dtype."""
    if not bf16:
        return x @ w
    return (x.to(torch.bfloat16) @ w.to(torch.bfloat16)).to(x.dtype)


def mse_per_element(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    return (x_hat - x).pow(2).mean()


def fired_counts(acts: torch.Tensor) -> torch.Tensor:
    return (acts > 0).sum(dim=0)
