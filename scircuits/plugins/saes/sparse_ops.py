"""Sparse kernels for k-sparse SAEs, in plain PyTorch (CPU or GPU).

With k active latents per token, everything but the encoder's forward product can be done in O(k):

- decoding is a weighted sum of k decoder rows per token (``embedding_bag``);
- the encoder's backward only needs the gradient at the k selected pre-activations: the input
  gradient is again a weighted sum of k rows of ``W_enc^T``, and the weight gradient is the
  transpose of an ``embedding_bag`` weight gradient (a scatter-add of ``g * x`` into k rows), on
  the CPU one sparse-by-dense product (``scatter_outer``), as is the decoder's weight gradient;
- the encoder's product and its top k run ``ROW_CHUNK`` rows at a time (``chunked_topk``).

``topk_encode`` and ``sparse_decode`` have dense equivalents (``dense_topk_encode``,
``dense_decode``) used as the eager fallback and in the equivalence tests.

With ``bf16`` the pre-activations ``x @ W_enc + b_enc`` are one bfloat16 product with the bias added
before its single rounding, and the top k are chosen among the bfloat16 values: the (B, d_sae)
matrix is never widened to float32, which on CPUs with native bfloat16 costs more than the product.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from scircuits import encoder_product


class _TopKEncode(torch.autograd.Function):
    """(x, W_enc, b_enc, k, bf16, b_dec) -> (relu'd top-k values of ``(x - b_dec) @ W_enc + b_enc``,
    their indices); ``b_dec`` None: x is already centred."""

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        w_enc: torch.Tensor,
        b_enc: torch.Tensor,
        k: int,  # type: ignore[override]
        bf16: bool,
        b_dec: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        centred = x if b_dec is None else x - b_dec
        values, indices = chunked_topk(centred, w_enc, b_enc, k, bf16)
        values = values.to(x.dtype).clamp_min(0)
        ctx.save_for_backward(centred, w_enc, values, indices)
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx, grad_values: torch.Tensor, _grad_indices: torch.Tensor):  # type: ignore[override]
        centred, w_enc, values, indices = ctx.saved_tensors
        g = grad_values * (values > 0)
        grad_x = grad_w = grad_b = grad_b_dec = None
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_b_dec = ctx.needs_input_grad[5]
        if need_b or need_b_dec:
            grad_b = torch.zeros(w_enc.shape[1], dtype=g.dtype, device=g.device)
            grad_b.index_add_(0, indices.reshape(-1), g.reshape(-1))
        if need_x:
            grad_x = F.embedding_bag(indices, w_enc.t().contiguous(), per_sample_weights=g, mode="sum")
        if need_b_dec:
            # sum over tokens of -grad_x: -W_enc @ (the b_enc gradient), O(d x d_sae), not O(B x k x d)
            grad_b_dec = -grad_x.sum(0) if grad_x is not None else -(w_enc @ grad_b)
        if need_w:
            grad_w = scatter_outer(indices, g, centred, w_enc.shape[1]).t()
        return grad_x, grad_w, grad_b if need_b else None, None, None, grad_b_dec


ROW_CHUNK = 1024  # CPU rows per product-and-select: the (B, d_sae) pre-activations never exist


def chunked_topk(
    x: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor, k: int, bf16: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``encoder_preactivation(...).topk(k, sorted=False)``, on the CPU ``ROW_CHUNK`` rows at a time
    through one reused buffer: no allocation of the full matrix (and its page faults) per step, and
    the same values (a row's product does not depend on the rows beside it; tested)."""
    n = x.shape[0]
    chunk = ROW_CHUNK if x.device.type == "cpu" else max(n, 1)
    if n <= chunk:
        return encoder_preactivation(x, w_enc, b_enc, bf16).topk(k, dim=-1, sorted=False)
    dtype = torch.bfloat16 if bf16 else x.dtype
    inputs, weights, bias = (t.to(dtype) for t in (x, w_enc, b_enc))
    values = torch.empty(n, k, dtype=dtype, device=x.device)
    indices = torch.empty(n, k, dtype=torch.long, device=x.device)
    buffer = torch.empty(chunk, w_enc.shape[1], dtype=dtype, device=x.device)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        pre = buffer[: stop - start]
        if bf16:
            torch.addmm(bias, inputs[start:stop], weights, out=pre)
        else:
            torch.mm(inputs[start:stop], weights, out=pre)
            pre += bias
        torch.topk(pre, k, dim=-1, sorted=False, out=(values[start:stop], indices[start:stop]))
    return values, indices


def encoder_preactivation(
    x: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor, bf16: bool
) -> torch.Tensor:
    """``x @ W_enc + b_enc``: float32, or with ``bf16`` bfloat16 (product and bias, one rounding)."""
    if bf16:
        low = torch.bfloat16
        return torch.addmm(b_enc.to(low), x.to(low), w_enc.to(low))
    pre = encoder_product(x, w_enc, False)
    pre += b_enc  # added after the product: bit-identical to the float32 path of earlier versions
    return pre


STABLE_SORT_PAIRS = 32_768  # from this many (token, latent) pairs torch sorts them stably on the CPU
MIN_ROW_WIDTH = 32  # MKL rounds rows of 4, 8, ..., 24 floats otherwise than one FMA per pair


def scatter_outer(indices: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """``out[indices[b, j]] += weights[b, j] * rows[b]`` for an (n, d) ``out``: the weight gradient of
    ``embedding_bag``. ``embedding_bag``'s backward sorts the pairs by latent and sums each latent's
    rows in that order; from ``STABLE_SORT_PAIRS`` pairs (every training batch of 4,096 tokens with
    k >= 8) the sort is stable, so the order is token order, and on the CPU one sparse (n, B) by
    dense product (MKL) gives the same bits faster (tested) for rows of at least ``MIN_ROW_WIDTH``
    floats. Otherwise, and off the CPU, that backward itself: the bits stay those of earlier
    versions everywhere."""
    weights, rows = weights.detach(), rows.detach()
    if rows.device.type != "cpu" or indices.numel() < STABLE_SORT_PAIRS or rows.shape[1] < MIN_ROW_WIDTH:
        return _embedding_bag_weight_grad(indices, weights, rows, n)
    return _token_order_weight_grad(indices, weights, rows, n)


class _LatentOrder:
    """The (token, latent) pairs sorted by latent (stably): CSR row pointers and each pair's token
    and position. A step's decoder and encoder backward sort the same indices; the second reuses the
    first's sort (two slots, AuxK's indices beside the step's, each checked by value, so a stale entry
    is never used)."""

    SLOTS = 2
    _lock = threading.Lock()
    _recent: ClassVar[list[tuple[torch.Tensor, int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]] = []

    @classmethod
    def of(cls, indices: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with cls._lock:
            for kept, kept_n, sorted_pairs in cls._recent:
                if kept_n == n and kept.shape == indices.shape and torch.equal(kept, indices):
                    return sorted_pairs
        flat = indices.reshape(-1)
        order = torch.argsort(flat, stable=True)
        crow = torch.zeros(n + 1, dtype=torch.long)
        torch.cumsum(torch.bincount(flat, minlength=n), 0, out=crow[1:])
        tokens = torch.div(order, indices.shape[-1], rounding_mode="floor")
        sorted_pairs = (order, crow, tokens)
        with cls._lock:
            cls._recent = [(indices.clone(), n, sorted_pairs), *cls._recent[: cls.SLOTS - 1]]
        return sorted_pairs


def _token_order_weight_grad(
    indices: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor, n: int
) -> torch.Tensor:
    order, crow, tokens = _LatentOrder.of(indices, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        by_latent = torch.sparse_csr_tensor(
            crow, tokens, weights.reshape(-1)[order], size=(n, rows.shape[0]), check_invariants=False
        )
        return by_latent @ rows


def _embedding_bag_weight_grad(
    indices: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor, n: int
) -> torch.Tensor:
    with torch.enable_grad():
        table = torch.zeros(n, rows.shape[1], dtype=rows.dtype, device=rows.device, requires_grad=True)
        out = F.embedding_bag(indices, table, per_sample_weights=weights, mode="sum")
        (grad,) = torch.autograd.grad(out, table, grad_outputs=rows)
    return grad


def topk_encode(
    x: torch.Tensor,
    w_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    bf16: bool = False,
    b_dec: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k latents of ``relu((x - b_dec) @ W_enc + b_enc)``: (values, indices), each (B, k).
    Given ``b_dec`` here rather than subtracted before, its gradient costs O(d x d_sae)."""
    return _TopKEncode.apply(x, w_enc, b_enc, k, bf16, b_dec)


def dense_topk_encode(
    x: torch.Tensor,
    w_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    bf16: bool = False,
    b_dec: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    x_centered = x if b_dec is None else x - b_dec
    values, indices = encoder_preactivation(x_centered, w_enc, b_enc, bf16).topk(k, dim=-1, sorted=False)
    return values.to(x_centered.dtype).relu(), indices


class _SparseDecode(torch.autograd.Function):
    """(indices, values, W_dec) -> ``embedding_bag``; its weight gradient by :func:`scatter_outer`."""

    @staticmethod
    def forward(ctx, indices: torch.Tensor, values: torch.Tensor, w_dec: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(indices, values, w_dec)
        if not ctx.needs_input_grad[1]:
            return F.embedding_bag(indices, w_dec, per_sample_weights=values, mode="sum")
        # the values' gradient is embedding_bag's own backward: keep its graph (weights detached)
        with torch.enable_grad():
            ctx.leaf = values.detach().requires_grad_()
            ctx.out = F.embedding_bag(indices, w_dec.detach(), per_sample_weights=ctx.leaf, mode="sum")
        return ctx.out.detach()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        indices, values, w_dec = ctx.saved_tensors
        grad_values = grad_w = None
        if ctx.needs_input_grad[1]:  # the graph stays while ctx does: a retained outer graph reruns this
            (grad_values,) = torch.autograd.grad(ctx.out, ctx.leaf, grad_out, retain_graph=True)
        if ctx.needs_input_grad[2]:
            grad_w = scatter_outer(indices, values, grad_out, w_dec.shape[0])
        return None, grad_values, grad_w


def sparse_decode(indices: torch.Tensor, values: torch.Tensor, w_dec: torch.Tensor) -> torch.Tensor:
    """``sum_j values[b, j] * W_dec[indices[b, j]]`` (no bias)."""
    return _SparseDecode.apply(indices, values, w_dec)


def dense_decode(indices: torch.Tensor, values: torch.Tensor, w_dec: torch.Tensor) -> torch.Tensor:
    return scatter_dense(indices, values, w_dec.shape[0]) @ w_dec


def scatter_dense(indices: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.zeros(*indices.shape[:-1], n, dtype=values.dtype, device=values.device)
    return out.scatter(-1, indices, values)


class _ReLUStep(torch.autograd.Function):
    """(x, W_enc, b_enc, W_dec, b_dec, bf16) -> (``f @ W_dec`` in float32, ``f.sum(0)``, how often
    each latent fired) with ``f = relu((x - b_dec) @ W_enc + b_enc)``: the ReLU SAE's training
    forward without its (B, d_sae) elementwise passes. The l1 term ``mean_t sum_i f_i |W_dec,i|`` is
    ``f.sum(0) @ |W_dec|`` / B, so its gradient reaches f as one row; the backward adds it to the
    decoder's gradient and masks by ``f > 0`` in one pass each. b_dec's gradient through the encoder
    is ``-W_enc @ g_b_enc`` (the TopK encoder's rule), so the input's gradient, the sixth product, is
    formed only when x itself needs one. With ``bf16`` f and its gradient stay bfloat16 (the
    products' dtype) instead of widening to float32."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        w_enc: torch.Tensor,
        b_enc: torch.Tensor,
        w_dec: torch.Tensor,
        b_dec: torch.Tensor,
        bf16: bool,
    ) -> tuple[torch.Tensor, ...]:
        centred = x - b_dec
        f = encoder_preactivation(centred, w_enc, b_enc, bf16).relu_()
        low = f.dtype
        x_hat = (f @ w_dec.to(low)).to(x.dtype)
        fired = torch.count_nonzero(f, dim=0)
        ctx.save_for_backward(centred, w_enc, w_dec, f)
        ctx.mark_non_differentiable(fired)
        return x_hat, f.sum(dim=0, dtype=torch.float32), fired

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_x_hat: torch.Tensor, g_f_sum: torch.Tensor, _: Any) -> tuple[Any, ...]:
        centred, w_enc, w_dec, f = ctx.saved_tensors
        low = f.dtype
        g_x_hat = g_x_hat.to(low)
        g_f = g_x_hat @ w_dec.to(low).T
        g_f += g_f_sum.to(low)
        g_pre = torch.ops.aten.threshold_backward(g_f, f, 0)
        g_w_dec = (f.T @ g_x_hat).to(w_dec.dtype)
        g_w_enc = (centred.to(low).T @ g_pre).to(w_enc.dtype)
        g_b_enc = g_pre.sum(dim=0, dtype=torch.float32).to(w_enc.dtype)
        g_b_dec = -(w_enc @ g_b_enc)
        g_x = (g_pre @ w_enc.to(low).T).to(centred.dtype) if ctx.needs_input_grad[0] else None
        return g_x, g_w_enc, g_b_enc, g_w_dec, g_b_dec, None


def relu_step(
    x: torch.Tensor,
    w_enc: torch.Tensor,
    b_enc: torch.Tensor,
    w_dec: torch.Tensor,
    b_dec: torch.Tensor,
    bf16: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ReLU SAE's fused training forward (``_ReLUStep``): (``f @ W_dec``, ``f.sum(0)``, fired
    counts), f the codes of x; b_dec is subtracted inside (add it to the first output yourself)."""
    return _ReLUStep.apply(x, w_enc, b_enc, w_dec, b_dec, bf16)
