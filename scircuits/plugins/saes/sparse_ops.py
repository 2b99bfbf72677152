"""Sparse kernels for k-sparse SAEs, in plain PyTorch (CPU or GPU).

With k active latents per token, everything but the encoder's forward product can be done in O(k):

- decoding is a weighted sum of k decoder rows per token (``embedding_bag``);
- the encoder's backward only needs the gradient at the k selected pre-activations: the input
  gradient is again a weighted sum of k rows of ``W_enc^T``, and the weight gradient is the
  transpose of an ``embedding_bag`` weight gradient (a scatter-add of ``g * x`` into k rows).

``topk_encode`` and ``sparse_decode`` have dense equivalents (``dense_topk_encode``,
``dense_decode``) used as the eager fallback and in the equivalence tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scircuits import encoder_product


class _TopKEncode(torch.autograd.Function):
    """(x_centered, W_enc, b_enc) -> (relu'd top-k values, their indices)."""

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        w_enc: torch.Tensor,
        b_enc: torch.Tensor,
        k: int,  # type: ignore[override]
        bf16: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pre = encoder_product(x, w_enc, bf16)
        pre += b_enc
        values, indices = pre.topk(k, dim=-1, sorted=False)
        values = values.clamp_min(0)
        ctx.save_for_backward(x, w_enc, values, indices)
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx, grad_values: torch.Tensor, _grad_indices: torch.Tensor):  # type: ignore[override]
        x, w_enc, values, indices = ctx.saved_tensors
        g = grad_values * (values > 0)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(indices, w_enc.t().contiguous(), per_sample_weights=g, mode="sum")
        if ctx.needs_input_grad[1]:
            grad_w = scatter_outer(indices, g, x, w_enc.shape[1]).t()
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(w_enc.shape[1], dtype=g.dtype, device=g.device)
            grad_b.index_add_(0, indices.reshape(-1), g.reshape(-1))
        return grad_x, grad_w, grad_b, None, None


def scatter_outer(indices: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """``out[indices[b, j]] += weights[b, j] * rows[b]`` for an (n, d) ``out``: the weight gradient of
    ``embedding_bag``, computed by its own backward (sorted segment sums in C++/CUDA)."""
    with torch.enable_grad():
        table = torch.zeros(n, rows.shape[1], dtype=rows.dtype, device=rows.device, requires_grad=True)
        out = F.embedding_bag(indices, table, per_sample_weights=weights.detach(), mode="sum")
        (grad,) = torch.autograd.grad(out, table, grad_outputs=rows.detach())
    return grad


def topk_encode(
    x_centered: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor, k: int, bf16: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k latents of ``relu(x_centered @ W_enc + b_enc)``: (values, indices), each (B, k)."""
    return _TopKEncode.apply(x_centered, w_enc, b_enc, k, bf16)


def dense_topk_encode(
    x_centered: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor, k: int, bf16: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    pre = encoder_product(x_centered, w_enc, bf16) + b_enc
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return values.relu(), indices


def sparse_decode(indices: torch.Tensor, values: torch.Tensor, w_dec: torch.Tensor) -> torch.Tensor:
    """``sum_j values[b, j] * W_dec[indices[b, j]]`` (no bias)."""
    return F.embedding_bag(indices, w_dec, per_sample_weights=values, mode="sum")


def dense_decode(indices: torch.Tensor, values: torch.Tensor, w_dec: torch.Tensor) -> torch.Tensor:
    return scatter_dense(indices, values, w_dec.shape[0]) @ w_dec


def scatter_dense(indices: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.zeros(*indices.shape[:-1], n, dtype=values.dtype, device=values.device)
    return out.scatter(-1, indices, values)
