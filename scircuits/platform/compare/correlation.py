"""Streaming Pearson correlation between the latents of two SAEs over the same tokens.

Feed chunks of feature activations ``(n_tokens, d_a)`` and ``(n_tokens, d_b)`` (rows are the same
tokens in both) to ``CorrelationAccumulator.add``; it keeps only the sufficient statistics: per-latent
sums and sums of squares (float64) and the cross-product ``A^T B`` (float32, ``d_a x d_b``). No
token x latent matrix outlives its chunk.

SAE codes are sparse (TopK: k non-zeros per token), so a chunk is turned into a CSR matrix and
``A^T B`` is a sparse product whose non-zeros are scattered into the dense accumulator: a token adds
``k_a * k_b`` products instead of ``d_a * d_b``. Chunks denser than ``DENSE_ABOVE`` use a dense
matmul instead.

``finish`` turns the accumulator into the correlation matrix in place, in row blocks, so the peak is
one ``d_a x d_b`` float32 matrix (1 GiB for 16k x 16k) plus a block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

DENSE_ABOVE = 0.05  # non-zero fraction above which a chunk's product is computed densely
ROW_BLOCK = 1024


def _chunk(chunk: Any) -> Any:
    """A float32 numpy array, or a float32 scipy CSR matrix when the chunk is sparse already."""
    from scipy import sparse

    if sparse.issparse(chunk):
        return sparse.csr_matrix(chunk, dtype=np.float32)
    if hasattr(chunk, "detach"):  # a torch tensor
        chunk = chunk.detach().to("cpu").float().numpy()
    array = np.asarray(chunk, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"expected a (n_tokens, d_sae) chunk, got shape {array.shape}")
    return array


def _density(a: np.ndarray, b: np.ndarray) -> float:
    return max(np.count_nonzero(a) / max(a.size, 1), np.count_nonzero(b) / max(b.size, 1))


def _csr(x: Any) -> Any:
    from scipy import sparse

    return x if sparse.issparse(x) else sparse.csr_matrix(x)


@dataclass
class CorrelationMatrix:
    """Pearson correlations ``corr[i, j]`` between latent i of A and latent j of B (float32).

    A latent that never varied over the tokens (dead, or constant) has no correlation: its row or
    column is 0 and ``alive_a`` / ``alive_b`` say which latents are usable.
    """

    corr: np.ndarray
    alive_a: np.ndarray
    alive_b: np.ndarray
    n_tokens: int


class CorrelationAccumulator:
    """Sufficient statistics for the correlation of every A latent with every B latent."""

    def __init__(self, d_a: int, d_b: int) -> None:
        self.d_a, self.d_b = d_a, d_b
        self.n = 0
        self.sum_a = np.zeros(d_a, dtype=np.float64)
        self.sum_b = np.zeros(d_b, dtype=np.float64)
        self.sq_a = np.zeros(d_a, dtype=np.float64)
        self.sq_b = np.zeros(d_b, dtype=np.float64)
        self.cross = np.zeros((d_a, d_b), dtype=np.float32)

    def add(self, a: Any, b: Any) -> None:
        """One chunk: ``a`` (n, d_a) and ``b`` (n, d_b), dense (numpy/torch) or scipy sparse."""
        a, b = _chunk(a), _chunk(b)
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"chunks cover different numbers of tokens: {a.shape[0]} and {b.shape[0]}")
        if a.shape[1] != self.d_a or b.shape[1] != self.d_b:
            raise ValueError(f"expected widths ({self.d_a}, {self.d_b}), got ({a.shape[1]}, {b.shape[1]})")
        if a.shape[0] == 0:
            return
        self.n += a.shape[0]
        for x, sums, squares in ((a, self.sum_a, self.sq_a), (b, self.sum_b, self.sq_b)):
            if isinstance(x, np.ndarray):
                sums += x.sum(axis=0, dtype=np.float64)
                squares += np.einsum("ij,ij->j", x, x, dtype=np.float64)
            else:
                sums += np.asarray(x.sum(axis=0, dtype=np.float64)).ravel()
                squares += np.asarray(x.multiply(x).sum(axis=0, dtype=np.float64)).ravel()
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and _density(a, b) > DENSE_ABOVE:
            self.cross += a.T @ b
            return
        product = (_csr(a).T.tocsr() @ _csr(b)).tocoo()
        self.cross[product.row, product.col] += product.data.astype(np.float32)

    def finish(self) -> CorrelationMatrix:
        """The correlation matrix; the accumulator's cross-product buffer becomes it (no copy)."""
        if self.n < 2:
            raise ValueError(f"need at least 2 tokens to correlate, got {self.n}")
        n = self.n
        mean_a, mean_b = self.sum_a / n, self.sum_b / n
        var_a = np.maximum(self.sq_a / n - mean_a**2, 0.0)
        var_b = np.maximum(self.sq_b / n - mean_b**2, 0.0)
        # a latent is usable when its variance is clearly above float rounding of its mean square
        alive_a = var_a > 1e-10 * np.maximum(self.sq_a / n, 1e-30)
        alive_b = var_b > 1e-10 * np.maximum(self.sq_b / n, 1e-30)
        inv_a = np.where(alive_a, 1.0 / np.sqrt(np.where(alive_a, var_a, 1.0)), 0.0).astype(np.float32)
        inv_b = np.where(alive_b, 1.0 / np.sqrt(np.where(alive_b, var_b, 1.0)), 0.0).astype(np.float32)
        mean_a32, mean_b32 = mean_a.astype(np.float32), mean_b.astype(np.float32)
        corr = self.cross
        for start in range(0, self.d_a, ROW_BLOCK):
            block = corr[start : start + ROW_BLOCK]
            block /= np.float32(n)
            block -= np.outer(mean_a32[start : start + ROW_BLOCK], mean_b32)
            block *= inv_a[start : start + ROW_BLOCK, None]
            block *= inv_b[None, :]
            np.clip(block, -1.0, 1.0, out=block)
        self.cross = np.zeros((0, 0), dtype=np.float32)  # the buffer now belongs to the result
        return CorrelationMatrix(corr, alive_a, alive_b, n)


def correlate(chunks: Any, d_a: int, d_b: int) -> CorrelationMatrix:
    """The correlation matrix of a stream of ``(a_chunk, b_chunk)`` pairs."""
    acc = CorrelationAccumulator(d_a, d_b)
    for a, b in chunks:
        acc.add(a, b)
    return acc.finish()
