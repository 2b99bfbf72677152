"""The torch base of every SAE: encode, decode, forward and a loss made of named terms.

Weights use SAELens' names and shapes (``W_enc`` d_in x d_sae, ``W_dec`` d_sae x d_in, ``b_enc``,
``b_dec``) so a checkpoint is a plain dict of these tensors.
"""

from __future__ import annotations

import torch
from torch import nn


class SparseAutoencoder(nn.Module):
    """Subclasses implement ``encode`` and ``loss``; ``decode`` is linear unless overridden."""

    variant: str = ""

    def __init__(self, d_in: int, d_sae: int) -> None:
        super().__init__()
        self.d_in = d_in
        self.d_sae = d_sae
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations (..., d_sae) of inputs (..., d_in)."""
        raise NotImplementedError

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named loss terms; ``"loss"`` is the total that training minimises."""
        raise NotImplementedError
