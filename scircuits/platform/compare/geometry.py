"""Do matched features sit in the same geometry? RSA of the decoder directions of matched pairs.

For m matched pairs (a_k, b_k), each side's representational similarity matrix is the cosine
similarity between its decoder rows: ``S_A[k, l] = cos(W_dec_A[a_k], W_dec_A[a_l])``, likewise S_B.
The RSA score is the Spearman correlation of the two matrices' upper triangles. It needs no shared
basis, so it works when the two models' widths differ (Lan et al. 2024 use SVCCA on decoder rows
and RSA the same way; RSA alone is used here because it handles any widths with one code path).

Null: shuffled pairings. Permuting which B latent goes with which A latent (rows and columns of S_B
together) keeps each side's own geometry but breaks the correspondence; the p-value is
``(1 + #{null >= observed}) / (1 + n_permutations)``, valid (never anti-conservative) under the
null. Ranks of S_B's entries are computed once: a permutation only moves entries, so the Spearman
of a permuted pairing is a Pearson correlation of permuted ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_PAIRS = 1000  # RSA over the most correlated pairs: S is m x m


@dataclass
class RSAResult:
    rsa: float
    p_value: float
    null_mean: float
    null_q95: float
    n_pairs: int
    n_permutations: int


def _cosine_matrix(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float64)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    unit = rows / np.maximum(norms, 1e-12)
    return unit @ unit.T


def _rank_matrix(sim: np.ndarray) -> np.ndarray:
    """Symmetric matrix of the ranks of the upper-triangle entries (diagonal unused), standardised."""
    from scipy.stats import rankdata

    m = sim.shape[0]
    iu = np.triu_indices(m, 1)
    ranks = rankdata(sim[iu])
    ranks = (ranks - ranks.mean()) / max(ranks.std(), 1e-12)
    out = np.zeros_like(sim)
    out[iu] = ranks
    return out + out.T


def rsa(dec_a: np.ndarray, dec_b: np.ndarray, n_permutations: int = 999, seed: int = 0) -> RSAResult:
    """RSA between paired decoder rows ``dec_a[k]`` <-> ``dec_b[k]`` with a shuffled-pairing p-value."""
    m = len(dec_a)
    if m != len(dec_b):
        raise ValueError(f"{m} A rows but {len(dec_b)} B rows")
    if m < 4:
        nan = float("nan")
        return RSAResult(nan, nan, nan, nan, m, 0)
    ra, rb = _rank_matrix(_cosine_matrix(dec_a)), _rank_matrix(_cosine_matrix(dec_b))
    n_entries = m * (m - 1)  # both triangles: the same sum twice

    def score(perm: np.ndarray | None) -> float:
        b = rb if perm is None else rb[np.ix_(perm, perm)]
        return float((ra * b).sum() / n_entries)

    observed = score(None)
    rng = np.random.default_rng(seed)
    null = np.array([score(rng.permutation(m)) for _ in range(n_permutations)])
    p = (1 + int((null >= observed).sum())) / (1 + n_permutations)
    return RSAResult(observed, p, float(null.mean()), float(np.quantile(null, 0.95)), m, n_permutations)


def random_rotation(d: int, seed: int) -> np.ndarray:
    """A Haar-random orthogonal d x d matrix (rows are an orthonormal basis)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))[None, :]
