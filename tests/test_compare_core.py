"""The matching core: streamed correlation equals the exact one; matches recover a permutation;
independent codes sit at the null; the candidate-graph Hungarian agrees with the dense one."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from scircuits.platform.compare import matching
from scircuits.platform.compare.correlation import CorrelationAccumulator, correlate
from scircuits.platform.compare.matching import distribution, hungarian_matches, max_matches


def topk_codes(rng: np.random.Generator, n: int, d: int, k: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    idx = np.argpartition(-x, k - 1, axis=1)[:, :k]
    out = np.zeros_like(x)
    np.put_along_axis(out, idx, np.take_along_axis(x, idx, 1), 1)
    return np.maximum(out, 0)


def chunks(a: np.ndarray, b: np.ndarray, size: int):
    for start in range(0, len(a), size):
        yield a[start : start + size], b[start : start + size]


def test_streamed_correlation_equals_numpy_for_sparse_dense_and_scipy_chunks():
    rng = np.random.default_rng(0)
    a = topk_codes(rng, 900, 40, 4)
    b = np.concatenate([a[:, :10] * 2 + 0.1, topk_codes(rng, 900, 25, 8)], axis=1)  # dense + sparse
    exact = np.corrcoef(a.T.astype(np.float64), b.T.astype(np.float64))[:40, 40:]
    for stream in (
        chunks(a, b, 128),
        ((sparse.csr_matrix(x), y) for x, y in chunks(a, b, 200)),
        [(a, b)],
    ):
        cm = correlate(stream, 40, 35)
        assert cm.n_tokens == 900 and cm.alive_a.all() and cm.alive_b.all()
        np.testing.assert_allclose(cm.corr, exact, atol=2e-5)


def test_dead_latents_are_flagged_and_have_zero_correlation():
    rng = np.random.default_rng(1)
    a = topk_codes(rng, 300, 12, 3)
    a[:, 5] = 0.0
    b = a.copy()
    b[:, 7] = 2.5  # constant: no variance
    cm = correlate([(a, b)], 12, 12)
    assert not cm.alive_a[5] and not cm.alive_b[5] and not cm.alive_b[7]
    assert np.all(cm.corr[5] == 0) and np.all(cm.corr[:, 7] == 0)
    forward, backward = max_matches(cm)
    assert 5 not in forward.a_index and 7 not in backward.b_index


def test_mismatched_chunks_are_refused():
    acc = CorrelationAccumulator(3, 4)
    with pytest.raises(ValueError, match="different numbers of tokens"):
        acc.add(np.zeros((5, 3)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="expected widths"):
        acc.add(np.zeros((5, 3)), np.zeros((5, 5)))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        acc.finish()


@pytest.mark.parametrize("dense_max", [4096, 10])
def test_a_permuted_copy_matches_perfectly(monkeypatch, dense_max):
    monkeypatch.setattr(matching, "DENSE_HUNGARIAN_MAX", dense_max)
    rng = np.random.default_rng(2)
    d = 150
    a = topk_codes(rng, 2000, d, 6)
    perm = rng.permutation(d)
    b = a[:, perm]  # B latent j is A latent perm[j]
    cm = correlate(chunks(a, b, 300), d, d)
    forward, backward = max_matches(cm)
    hung = hungarian_matches(cm)
    assert np.allclose(forward.corr, 1, atol=1e-5) and np.allclose(backward.corr, 1, atol=1e-5)
    assert np.array_equal(perm[forward.b_index], forward.a_index)
    assert np.array_equal(perm[backward.b_index], backward.a_index)
    assert len(hung) == d and np.array_equal(perm[hung.b_index], hung.a_index)
    assert hung.method == ("hungarian-dense" if dense_max > d else "hungarian-candidates16")
    assert distribution(hung.corr).above_09 == 1.0


def test_independent_codes_sit_at_the_null_and_both_solvers_agree(monkeypatch):
    rng = np.random.default_rng(3)
    n, d = 4000, 120
    a, b = topk_codes(rng, n, d, 6), topk_codes(rng, n, d, 6)
    cm = correlate(chunks(a, b, 1000), d, d)
    forward, _ = max_matches(cm)
    # the max of d near-independent correlations, each with sd ~ 1/sqrt(n): a few 1/sqrt(n)
    assert forward.corr.max() < 6 / np.sqrt(n)
    dense = hungarian_matches(cm)
    monkeypatch.setattr(matching, "DENSE_HUNGARIAN_MAX", 10)
    candidate = hungarian_matches(cm)
    assert candidate.corr.sum() >= 0.97 * dense.corr.sum()
    assert distribution(dense.corr, d).above_05 == 0.0


def test_distribution_shares_count_unmatched_latents_as_below():
    dist = distribution(np.array([0.95, 0.6, 0.2]), n_total=6)
    assert dist.n == 3 and dist.above_09 == pytest.approx(1 / 6) and dist.above_05 == pytest.approx(2 / 6)
    assert sum(dist.hist_counts) == 3
