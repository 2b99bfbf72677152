"""Matching latents from a correlation matrix: best match each way, and one-to-one (Hungarian).

``max_matches`` gives every live latent of A its most correlated live latent of B (and the reverse).
``hungarian_matches`` pairs latents one-to-one to maximise the summed correlation. Up to
``DENSE_HUNGARIAN_MAX`` latents a side it is ``scipy.optimize.linear_sum_assignment`` on the full
matrix (exact). Above, the full problem is too slow and too large in float64, so it is solved
exactly on a candidate graph: each latent's ``candidates`` most correlated partners (both ways),
with an "unmatched" option at correlation 0 for every latent, by
``scipy.sparse.csgraph.min_weight_full_bipartite_matching``. Any pair with positive correlation that
the dense solution would use and that lies among the candidates is reachable; a pair outside every
latent's top candidates is almost never part of an optimum, and the summary records which solver ran.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scircuits.platform.compare.correlation import CorrelationMatrix

DENSE_HUNGARIAN_MAX = 4096
CANDIDATES = 16


@dataclass
class Matches:
    """Pairs (a_index[i], b_index[i]) with their correlation, in descending correlation."""

    a_index: np.ndarray
    b_index: np.ndarray
    corr: np.ndarray
    method: str

    @classmethod
    def build(cls, a: np.ndarray, b: np.ndarray, corr: np.ndarray, method: str) -> Matches:
        order = np.argsort(-corr, kind="stable")
        return cls(
            a[order].astype(np.int64), b[order].astype(np.int64), corr[order].astype(np.float64), method
        )

    def __len__(self) -> int:
        return len(self.a_index)


@dataclass
class MatchSet:
    """All of one comparison's matches: one-to-one, and each live latent's best partner each way."""

    hungarian: Matches
    a_to_b: Matches
    b_to_a: Matches

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays of a matches file (``compare/matches/pair-I-J.npz``; keys in docs/formats.md)."""
        out: dict[str, np.ndarray] = {}
        for name, m in (
            ("hungarian", self.hungarian),
            ("max_a_to_b", self.a_to_b),
            ("max_b_to_a", self.b_to_a),
        ):
            out[f"{name}_a"] = m.a_index.astype(np.int32)
            out[f"{name}_b"] = m.b_index.astype(np.int32)
            out[f"{name}_corr"] = m.corr.astype(np.float32)
        return out


def max_matches(cm: CorrelationMatrix) -> tuple[Matches, Matches]:
    """(A -> B, B -> A): each live latent's most correlated live partner (many-to-one allowed)."""
    corr = cm.corr
    if not cm.alive_a.any() or not cm.alive_b.any():
        empty = np.zeros(0, dtype=np.int64)
        return Matches(empty, empty, np.zeros(0), "max"), Matches(empty, empty, np.zeros(0), "max")
    dead_b = np.flatnonzero(~cm.alive_b)
    best_b = np.empty(corr.shape[0], dtype=np.int64)
    best_ab = np.empty(corr.shape[0], dtype=np.float32)
    col_best = np.full(corr.shape[1], -np.inf, dtype=np.float32)
    col_arg = np.zeros(corr.shape[1], dtype=np.int64)
    for start in range(0, corr.shape[0], 1024):
        block = corr[start : start + 1024].copy()
        block[:, dead_b] = -np.inf
        block[~cm.alive_a[start : start + 1024]] = -np.inf
        best_b[start : start + len(block)] = block.argmax(axis=1)
        best_ab[start : start + len(block)] = block.max(axis=1)
        arg = block.argmax(axis=0)
        value = block[arg, np.arange(block.shape[1])]
        better = value > col_best
        col_best[better] = value[better]
        col_arg[better] = arg[better] + start
    a_live = np.flatnonzero(cm.alive_a)
    b_live = np.flatnonzero(cm.alive_b)
    forward = Matches.build(a_live, best_b[a_live], best_ab[a_live], "max")
    backward = Matches.build(col_arg[b_live], b_live, col_best[b_live], "max")
    return forward, backward


def hungarian_matches(cm: CorrelationMatrix, candidates: int = CANDIDATES) -> Matches:
    """One-to-one pairs of live latents maximising the summed correlation (pairs with corr > 0)."""
    a_live = np.flatnonzero(cm.alive_a)
    b_live = np.flatnonzero(cm.alive_b)
    if len(a_live) == 0 or len(b_live) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Matches(empty, empty, np.zeros(0), "hungarian")
    if max(len(a_live), len(b_live)) <= DENSE_HUNGARIAN_MAX:
        from scipy.optimize import linear_sum_assignment

        sub = cm.corr[np.ix_(a_live, b_live)]
        rows, cols = linear_sum_assignment(sub, maximize=True)
        values = sub[rows, cols]
        keep = values > 0
        return Matches.build(a_live[rows[keep]], b_live[cols[keep]], values[keep], "hungarian-dense")
    return _sparse_hungarian(cm, a_live, b_live, candidates)


def _top_candidates(cm: CorrelationMatrix, a_live: np.ndarray, b_live: np.ndarray, m: int) -> np.ndarray:
    """Pairs (i, j) in live-index space: each A latent's and each B latent's m best partners."""
    m_b = min(m, len(b_live))
    m_a = min(m, len(a_live))
    pairs = []
    col_top_val = np.full((m_a, len(b_live)), -np.inf, dtype=np.float32)
    col_top_arg = np.zeros((m_a, len(b_live)), dtype=np.int64)
    for start in range(0, len(a_live), 1024):
        rows = a_live[start : start + 1024]
        block = cm.corr[rows][:, b_live]
        top = np.argpartition(-block, m_b - 1, axis=1)[:, :m_b]
        pairs.append(np.stack([np.repeat(np.arange(start, start + len(rows)), m_b), top.ravel()], 1))
        # running top-m per column over the row blocks
        merged_val = np.concatenate([col_top_val, block], axis=0)
        merged_arg = np.concatenate(
            [col_top_arg, np.arange(start, start + len(rows))[:, None].repeat(len(b_live), 1)], axis=0
        )
        keep = np.argpartition(-merged_val, m_a - 1, axis=0)[:m_a]
        col_top_val = np.take_along_axis(merged_val, keep, axis=0)
        col_top_arg = np.take_along_axis(merged_arg, keep, axis=0)
    pairs.append(np.stack([col_top_arg.ravel(), np.tile(np.arange(len(b_live)), m_a)], 1))
    return np.unique(np.concatenate(pairs), axis=0)


def _sparse_hungarian(
    cm: CorrelationMatrix, a_live: np.ndarray, b_live: np.ndarray, candidates: int
) -> Matches:
    from scipy import sparse
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    pairs = _top_candidates(cm, a_live, b_live, candidates)
    values = cm.corr[a_live[pairs[:, 0]], b_live[pairs[:, 1]]].astype(np.float64)
    positive = values > 0
    pairs, values = pairs[positive], values[positive]
    n_a, n_b = len(a_live), len(b_live)
    # Rows: A latents then one "unmatched" row per B latent; columns: B latents then one "unmatched"
    # column per A latent. A real pair costs (1 - c) + 1 with its mirrored dummy-dummy edge; leaving
    # both latents unmatched costs 1 + 1, so a pair is used exactly when it helps (c > 0). All
    # weights are positive: scipy treats a stored zero as no edge.
    eps = 1e-9
    rows = np.concatenate([pairs[:, 0], np.arange(n_a), n_a + np.arange(n_b), n_a + pairs[:, 1]])
    cols = np.concatenate([pairs[:, 1], n_b + np.arange(n_a), np.arange(n_b), n_b + pairs[:, 0]])
    weights = np.concatenate([1.0 - values + eps, np.ones(n_a), np.ones(n_b), np.ones(len(pairs))])
    graph = sparse.csr_matrix((weights, (rows, cols)), shape=(n_a + n_b, n_b + n_a))
    row_ind, col_ind = min_weight_full_bipartite_matching(graph)
    real = (row_ind < n_a) & (col_ind < n_b)
    i, j = row_ind[real], col_ind[real]
    corr = cm.corr[a_live[i], b_live[j]]
    return Matches.build(a_live[i], b_live[j], corr, f"hungarian-candidates{candidates}")


@dataclass
class Distribution:
    """Summary of matched correlations: mean, quantiles, shares above thresholds, a histogram."""

    n: int
    mean: float
    median: float
    q10: float
    q90: float
    above_05: float
    above_07: float
    above_09: float
    hist_edges: list[float]
    hist_counts: list[int]


HIST_EDGES = np.linspace(-0.2, 1.0, 61)


def distribution(values: np.ndarray, n_total: int | None = None) -> Distribution:
    """Summary of ``values`` (mean and quantiles over the values); the shares above thresholds are
    over ``n_total`` latents (default: len(values)), so an unmatched latent counts as below."""
    values = np.asarray(values, dtype=np.float64)
    total = max(n_total if n_total is not None else len(values), 1)
    counts, _ = np.histogram(np.clip(values, HIST_EDGES[0], HIST_EDGES[-1]), bins=HIST_EDGES)
    if len(values) == 0:
        nan = float("nan")
        return Distribution(0, nan, nan, nan, nan, 0.0, 0.0, 0.0, HIST_EDGES.tolist(), counts.tolist())
    return Distribution(
        n=len(values),
        mean=float(values.mean()),
        median=float(np.median(values)),
        q10=float(np.quantile(values, 0.1)),
        q90=float(np.quantile(values, 0.9)),
        above_05=float((values > 0.5).sum() / total),
        above_07=float((values > 0.7).sum() / total),
        above_09=float((values > 0.9).sum() / total),
        hist_edges=HIST_EDGES.tolist(),
        hist_counts=counts.tolist(),
    )
