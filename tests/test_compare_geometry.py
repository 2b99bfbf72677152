"""RSA of matched decoder directions and its shuffled-pairing p-value."""

from __future__ import annotations

import numpy as np
from scipy import stats

from scircuits.platform.compare.geometry import random_rotation, rsa


def test_the_same_geometry_in_another_basis_and_width_scores_one_with_a_small_p():
    rng = np.random.default_rng(0)
    dec_a = rng.normal(size=(60, 16))
    # B: the same directions rotated and embedded in a wider space (another model's width)
    dec_b = np.concatenate([dec_a @ random_rotation(16, 1), np.zeros((60, 8))], axis=1) * 3.0
    result = rsa(dec_a, dec_b, n_permutations=199, seed=0)
    assert result.rsa > 0.999 and result.p_value == 1 / 200
    assert abs(result.null_mean) < 0.05


def test_p_values_are_calibrated_under_the_null():
    # independent decoders, paired arbitrarily: the p-value must be uniform on its grid
    rng = np.random.default_rng(1)
    p_values = []
    for trial in range(300):
        dec_a, dec_b = rng.normal(size=(12, 6)), rng.normal(size=(12, 9))
        p_values.append(rsa(dec_a, dec_b, n_permutations=99, seed=trial).p_value)
    p_values = np.array(p_values)
    assert stats.kstest(p_values, "uniform").pvalue > 0.01
    for alpha in (0.05, 0.1, 0.5):
        # the rejection rate at alpha is about alpha (binomial sd ~ sqrt(alpha/300))
        assert abs((p_values <= alpha).mean() - alpha) < 3.5 * np.sqrt(alpha * (1 - alpha) / 300)


def test_too_few_pairs_give_no_score():
    result = rsa(np.ones((3, 4)), np.ones((3, 4)))
    assert np.isnan(result.rsa) and result.n_permutations == 0


def test_random_rotation_is_orthogonal():
    q = random_rotation(20, 3)
    np.testing.assert_allclose(q @ q.T, np.eye(20), atol=1e-10)
