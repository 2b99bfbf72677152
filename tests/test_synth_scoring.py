"""Scoring functions on constructed cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from scircuits import (
    aligned_features,
    auroc,
    best_f1,
    feature_recovery,
    fit_logistic,
    probe_direction,
    probe_recovery,
    random_decoder_features,
    ranking_recovery,
    specificity,
    variable_labels,
)


def _cells(n: int, seed: int = 0) -> tuple[list[dict[str, int]], np.ndarray]:
    """Every other token holds a carry; the carries as an array."""
    rng = np.random.default_rng(seed)
    carry = rng.integers(0, 2, size=n)
    cells = [{"carry_in": int(c), "column": i % 4} if i % 2 == 0 else {} for i, c in enumerate(carry)]
    return cells, carry


def test_auroc_of_the_variable_itself_is_one_and_of_noise_about_a_half():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=4000).astype(bool)
    assert auroc(y.astype(float), y) == 1.0
    assert auroc(-y.astype(float), y) == 0.0
    assert abs(auroc(rng.standard_normal(4000), y) - 0.5) < 0.03
    assert auroc(np.zeros(4000), y) == 0.5  # all tied


def test_auroc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, size=(60, 3)).astype(float)
    y = rng.integers(0, 2, size=60).astype(bool)
    for j in range(3):
        pos, neg = scores[y, j], scores[~y, j]
        pairwise = ((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None])).mean()
        assert auroc(scores, y)[j] == pytest.approx(pairwise)


def test_best_f1_of_a_perfect_and_a_useless_unit():
    y = np.array([1, 1, 0, 0, 1, 0], dtype=bool)
    assert best_f1(y.astype(float), y)[0] == 1.0
    f1, _ = best_f1(np.zeros(6), y)  # one threshold admits everything
    assert f1 == pytest.approx(2 * 3 / (6 + 3))


def test_feature_recovery_finds_the_planted_feature_and_not_noise():
    cells, carry = _cells(3000)
    labels = variable_labels(cells)
    assert [lab.name for lab in labels] == [
        "carry_in=0",
        "carry_in=1",
    ]  # "column" is a position, not a variable
    rng = np.random.default_rng(2)
    acts = np.maximum(rng.standard_normal((3000, 50)), 0) * (rng.random((3000, 50)) < 0.2)
    acts[:, 17] = carry  # feature 17 fires exactly on carries
    found = feature_recovery(acts, labels, source="sae").by_label()["carry_in=1"]
    assert (found.unit, found.auroc, found.f1) == (17, 1.0, 1.0)
    noise = feature_recovery(np.delete(acts, 17, axis=1), labels, source="sae")
    assert all(r.auroc < 0.6 for r in noise.labels)
    assert noise.share_recovered == 0.0


def test_signed_reading_of_raw_dimensions():
    cells, carry = _cells(2000, seed=3)
    labels = variable_labels(cells)
    acts = np.random.default_rng(0).standard_normal((2000, 8))
    acts[:, 5] = -3.0 * carry + 0.01 * acts[:, 5]
    unsigned = feature_recovery(acts, labels, source="sae").by_label()["carry_in=1"]
    signed = feature_recovery(acts, labels, source="raw", signed=True).by_label()["carry_in=1"]
    assert unsigned.unit != 5 and unsigned.auroc < 0.6
    assert (signed.unit, signed.sign, signed.auroc) == (5, -1, 1.0)


def test_probe_reads_a_linearly_present_variable_that_no_single_unit_holds():
    cells, carry = _cells(4000, seed=4)
    labels = variable_labels(cells)
    rng = np.random.default_rng(5)
    direction = rng.standard_normal(16)
    acts = rng.standard_normal((4000, 16)) * 3 + np.outer(carry, direction) * 3.0
    probe = probe_recovery(acts, labels).by_label()["carry_in=1"]
    raw = feature_recovery(acts, labels, source="raw", signed=True).by_label()["carry_in=1"]
    assert probe.auroc > 0.95 and raw.auroc < probe.auroc
    shuffled = probe_recovery(acts, [labels[1].__class__("x", labels[1].rows, rng.permutation(labels[1].y))])
    assert abs(shuffled.labels[0].auroc - 0.5) < 0.1


def test_probe_direction_points_along_the_planted_direction_in_the_raw_space():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, size=3000).astype(bool)
    direction = rng.standard_normal(16)
    direction /= np.linalg.norm(direction)
    scale = np.linspace(0.5, 5, 16)  # unequal unit variances: the raw-space direction must undo them
    acts = rng.standard_normal((3000, 16)) * scale * 0.3 + np.outer(y, direction) * 2.0
    # the Bayes direction for equal-covariance classes is Σ⁻¹ Δμ, not Δμ itself
    bayes = direction / (scale * 0.3) ** 2
    bayes /= np.linalg.norm(bayes)
    found = probe_direction(acts, y)
    assert np.isclose(np.linalg.norm(found), 1.0) and found @ bayes > 0.95


def test_fit_logistic_binary_and_multinomial_read_planted_classes_in_the_raw_space():
    rng = np.random.default_rng(3)
    n, d = 1500, 12
    classes = rng.integers(0, 3, size=n)
    means = rng.standard_normal((3, d)) * 2.0
    acts = rng.standard_normal((n, d)) + means[classes]
    train = np.arange(n) < 1000
    multi = fit_logistic(acts, classes, train, n_classes=3)
    assert multi.weights.shape == (d, 3) and np.shape(multi.bias) == (3,)
    held = multi.scores(acts[~train]).argmax(1)
    assert (held == classes[~train]).mean() > 0.9
    # the fit standardises its inputs, so a per-coordinate rescaling and shift changes nothing
    scale, shift = np.linspace(0.1, 10, d), rng.standard_normal(d) * 5
    again = fit_logistic(acts * scale + shift, classes, train, n_classes=3)
    assert np.allclose(again.scores(acts * scale + shift), multi.scores(acts), atol=1e-5)
    binary = fit_logistic(acts, classes == 1, train)
    assert binary.weights.shape == (d,) and isinstance(binary.bias, float)
    assert auroc(binary.scores(acts[~train]), classes[~train] == 1) > 0.95
    # a shuffled label is not read (the test can fail: a leak of the held-out rows would show here)
    shuffled = fit_logistic(acts, rng.permutation(classes == 1), train)
    assert auroc(shuffled.scores(acts[~train]), classes[~train] == 1) < 0.65


def test_random_decoder_features_are_sparse_and_shaped():
    acts = np.random.default_rng(0).standard_normal((100, 16))
    feats = random_decoder_features(acts, d_sae=64, k=4)
    assert feats.shape == (100, 64)
    assert ((feats > 0).sum(axis=1) <= 4).all() and (feats >= 0).all()


def test_ranking_recovery_precision_recall_and_auroc():
    scores = np.array([0.9, 0.1, 0.8, 0.0, 0.7, 0.2])
    perfect = ranking_recovery(scores, {0, 2, 4}, ks=(1, 3, 6))
    assert perfect.precision_at_k == {1: 1.0, 3: 1.0, 6: 0.5}
    assert perfect.recall_at_k == {1: 1 / 3, 3: 1.0, 6: 1.0}
    assert perfect.auroc == 1.0
    worst = ranking_recovery(scores, {1, 3, 5}, ks=(3,))
    assert worst.precision_at_k == {3: 0.0} and worst.auroc == 0.0
    with pytest.raises(ValueError, match="causal set is empty"):
        ranking_recovery(scores, set())


def test_aligned_features_keep_only_recovered_labels():
    cells, carry = _cells(1000)
    labels = variable_labels(cells)
    acts = np.zeros((1000, 3))
    acts[:, 1] = carry
    recovery = feature_recovery(acts, labels, source="sae")
    assert aligned_features(recovery, ["carry_in=1"]) == {1}
    assert aligned_features(recovery, ["carry_in=1"], min_auroc=1.01) == set()


# -- specificity ----------------------------------------------------------------------------------


def _clean_scores(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(-0.5, 1.0, size=n), rng.random(n) < 0.5


def test_null_edit_reports_no_effect_on_independent_problems():
    clean, depends = _clean_scores()
    result = specificity(clean, clean.copy(), depends)
    assert result.independent.mean == 0.0
    assert not result.independent.excludes_zero
    assert not result.dependent.excludes_zero
    assert not result.specific


def test_an_edit_of_dependent_problems_only_is_specific():
    clean, depends = _clean_scores(seed=1)
    noise = np.random.default_rng(9).normal(0, 0.05, size=len(clean))
    edited = clean - 2.0 * depends + noise * ~depends
    result = specificity(clean, edited, depends)
    assert result.dependent.excludes_zero and result.dependent.mean == pytest.approx(-2.0)
    assert not result.independent.excludes_zero
    assert result.specific and result.difference.high < 0


def test_an_edit_of_every_problem_is_not_specific():
    clean, depends = _clean_scores(seed=2)
    result = specificity(clean, clean - 1.0, depends)
    assert result.independent.excludes_zero and not result.specific
