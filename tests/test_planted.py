"""The hard planted-dictionary problem: scores on constructed dictionaries, the data's law, the
baselines, and a small end-to-end table."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from scircuits.platform.train.planted import (
    HardPlantedSetup,
    PlantedData,
    dictionary_scores,
    format_table,
    random_decoder,
    spherical_kmeans,
    validate_hard,
)


def test_scores_of_a_permuted_copy_are_perfect():
    atoms = np.random.default_rng(0).standard_normal((10, 6))
    learned = np.concatenate([atoms[::-1] * 3.0, np.random.default_rng(1).standard_normal((5, 6))])
    scores = dictionary_scores(learned, atoms)
    assert (scores.mcc, scores.mmcs, scores.recovered) == pytest.approx((1.0, 1.0, 1.0))


def test_one_to_one_matching_is_stricter_than_best_cosine():
    true = np.eye(2)
    learned = np.array([[1.0, 1.0], [-1.0, 0.0]])  # one row halfway between both atoms
    scores = dictionary_scores(learned, true)
    assert scores.mmcs == pytest.approx(1 / math.sqrt(2))  # both atoms reuse the same row
    assert scores.mcc == pytest.approx(1 / math.sqrt(2) / 2)  # only one may have it
    assert scores.recovered == 0.0
    repeated = dictionary_scores(np.tile([1.0, 0.0, 0.0, 0.0], (4, 1)), np.eye(4))
    assert (repeated.mcc, repeated.mmcs, repeated.recovered) == pytest.approx((0.25, 0.25, 0.25))


def test_the_problem_must_be_overcomplete_by_four():
    with pytest.raises(ValidationError, match="at least 4 x d_in"):
        HardPlantedSetup(d_in=32, n_atoms=100)


def small_setup(**changes) -> HardPlantedSetup:
    values = dict(d_in=8, n_atoms=32, expansion=8, mean_l0=3.0, n_tokens=20480, pool_tokens=8192)
    return HardPlantedSetup(**{**values, **changes})


def test_the_data_follow_their_law():
    setup = small_setup()
    data = PlantedData(setup)
    x, codes = data.sample(40000)
    assert x.shape == (40000, 8) and codes.shape == (40000, 32)
    assert torch.allclose(data.atoms.norm(dim=1), torch.ones(32, dtype=torch.float64))
    active = codes > 0
    # Zipf: the measured frequencies follow the planted ones (children keep theirs through the boost)
    measured = active.double().mean(dim=0)
    assert torch.allclose(measured, data.frequency, atol=0.02)
    assert float(data.frequency.max() / data.frequency.min()) > 10
    # hierarchy: a child never fires without its parent
    children = torch.nonzero(data.parent >= 0).flatten()
    assert len(children) == round(0.25 * 32)
    assert not (active[:, children] & ~active[:, data.parent[children]]).any()
    # exponential magnitudes with mean 1
    assert float(codes[active].mean()) == pytest.approx(1.0, abs=0.05)
    # firing is correlated through the shared factors (excluding parent-child pairs)
    independent = PlantedData(small_setup(correlation=0.0, child_fraction=0.0)).sample(40000)[1] > 0

    def mean_abs_corr(a):
        c = torch.corrcoef(a.double().t())
        return float(c[~torch.eye(32, dtype=torch.bool)].abs().mean())

    assert mean_abs_corr(active) > 2 * mean_abs_corr(independent)


def test_data_and_initialisation_seeds_are_independent():
    a, b = PlantedData(small_setup()), PlantedData(small_setup(init_seed=99))
    assert torch.equal(a.atoms, b.atoms) and torch.equal(a.sample(100)[0], b.sample(100)[0])
    c = PlantedData(small_setup(data_seed=5))
    assert not torch.equal(a.atoms, c.atoms)


def test_kmeans_finds_one_sparse_atoms_and_random_rows_do_not():
    rng = np.random.default_rng(0)
    atoms = np.eye(6)
    x = atoms[rng.integers(0, 6, 3000)] * rng.exponential(1.0, (3000, 1)) + 0.01 * rng.normal(size=(3000, 6))
    assert dictionary_scores(spherical_kmeans(x, 6, 20, seed=0), atoms).mcc > 0.95
    assert dictionary_scores(random_decoder(6, 6, seed=0), atoms).mcc < 0.8


def test_small_table_end_to_end():
    from scircuits.platform.manager.plugin_set import get_plugins

    table = validate_hard(
        [get_plugins().saes.get("topk")],
        small_setup(d_in=16, n_atoms=64, n_tokens=51200, batch_size=256, k=4),
    )
    names = [r.name for r in table.rows]
    assert names == ["random decoder", "spherical k-means", "topk"]
    random_row, _, topk = table.rows
    assert topk.kind == "sae" and topk.hparams == {"k": 4} and topk.l0 == pytest.approx(4.0)
    assert topk.lr == pytest.approx(2e-4 / math.sqrt(128 / 2**14) * math.sqrt(256 / 64))  # the default rule
    assert topk.mcc > random_row.mcc + 0.1
    assert topk.passed == (topk.mcc >= 0.9) and (topk.passed or topk.note)
    assert 1.5 < table.true_l0 < 3.5
    text = format_table(table)
    assert "spherical k-means" in text and "topk" in text and "true L0" in text
    assert json.loads(json.dumps(table.model_dump(mode="json")))["rows"][2]["name"] == "topk"
