"""Floors of a pair in the pair's own spaces (`platform/compare/floors.py`): for runs on different
models or layers, A's SAE is set against an untrained SAE (or a random basis) applied to B's
activations, and the reverse; runs that read the same activations keep their own floors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from scircuits.platform.compare import internals
from scircuits.platform.compare.floors import floor_jobs, same_space
from scircuits.platform.compare.runs import Run
from scircuits.platform.compare.sources import Chunk
from scircuits.platform.compare.study import CompareOptions, pair_floors
from scircuits.platform.manager.plugin_set import load_plugins

D_A, D_B, SAE_A, SAE_B, N = 8, 12, 16, 24, 3000


@pytest.fixture(scope="module")
def core():
    return internals.Core(load_plugins(entry_points_too=False))


def _run(model: str, layer: int) -> Run:
    return Run(
        path=Path(f"runs/{model}-{layer}"),
        results={},
        config={"model": model, "layer": layer, "site": "resid"},
        sae_path=Path("sae"),
        store_path=None,
        sae_meta={"variant": "relu", "hparams": {}},
    )


def _saes_reading_one_code(core):
    """A's SAE on A's space; B's activations are A's mapped by M (8 -> 12, full row rank), and B's SAE
    is A's read through M's pseudo-inverse, so both give the same codes on paired tokens."""
    torch.manual_seed(0)
    sae_a = core.plugins.saes.get("relu").build(D_A, SAE_A, {}).eval()
    rng = np.random.default_rng(0)
    m = rng.standard_normal((D_A, D_B))
    sae_b = core.plugins.saes.get("relu").build(D_B, SAE_A, {}).eval()
    with torch.no_grad():
        sae_a.b_enc.copy_(torch.full((SAE_A,), -0.3))
        sae_b.W_enc.copy_(torch.from_numpy(np.linalg.pinv(m) @ sae_a.W_enc.numpy()).float())
        sae_b.b_enc.copy_(sae_a.b_enc)
    xa = torch.from_numpy(rng.standard_normal((N, D_A))).float()
    xb = (xa.double() @ torch.from_numpy(m)).float()
    return sae_a, sae_b, xa, xb


def test_each_floor_applies_its_null_to_its_own_sides_activations(core):
    sae_a = core.plugins.saes.get("relu").build(D_A, SAE_A, {}).eval()
    sae_b = core.plugins.saes.get("relu").build(D_B, SAE_B, {}).eval()
    xa, xb = torch.randn(50, D_A), torch.randn(50, D_B)
    seen = []

    def chunks_for(encode_a, encode_b):
        def chunks():  # an encoder fed the other side's width would fail here
            seen.append(1)
            yield Chunk(encode_a(xa), encode_b(xb), np.zeros((50, 4), dtype=np.int64))

        return chunks()

    jobs = floor_jobs((_run("a", 1), _run("b", 2)), (sae_a, sae_b), chunks_for, core)
    by_field = {job.field: job for job in jobs}
    assert set(by_field) == {"a_vs_untrained_b", "untrained_a_vs_b", "a_vs_basis_b", "basis_a_vs_b"}
    assert by_field["a_vs_untrained_b"].dims == (SAE_A, SAE_B)  # B's kind and size
    assert by_field["a_vs_basis_b"].dims == (SAE_A, D_B)  # a basis of B's space
    assert by_field["untrained_a_vs_b"].dims == (SAE_A, SAE_B)
    assert by_field["basis_a_vs_b"].dims == (D_A, SAE_B)
    assert by_field["a_vs_untrained_b"].labels == ("a resid1", "untrained SAE on b resid2")
    assert not seen  # planned, not read yet
    for job in jobs:
        (chunk,) = list(job.chunks)
        assert chunk.a.shape == (50, job.dims[0]) and chunk.b.shape == (50, job.dims[1])
        assert job.decoders[0].shape[0] == job.dims[0] and job.decoders[1].shape[0] == job.dims[1]


def test_the_floors_sit_below_a_pair_that_reads_one_code_in_two_spaces(core):
    sae_a, sae_b, xa, xb = _saes_reading_one_code(core)
    assert torch.allclose(sae_a.encode(xa), sae_b.encode(xb), atol=1e-3)

    def chunks_for(encode_a, encode_b, counts):
        for start in range(0, N, 1000):
            yield Chunk(
                encode_a(xa[start : start + 1000]),
                encode_b(xb[start : start + 1000]),
                np.zeros((1000, 4), dtype=np.int64),
            )

    options = CompareOptions(permutations=9, progress=False)
    runs = (_run("a", 1), _run("b", 2))
    floors = pair_floors(runs, (sae_a, sae_b), chunks_for, "stores", options, core)
    assert floors is not None
    for c in (floors.a_vs_untrained_b, floors.a_vs_basis_b, floors.untrained_a_vs_b, floors.basis_a_vs_b):
        assert c.n_tokens == N and c.source == "stores"
    # the pair itself matches perfectly; no floor comes close
    assert floors.a_vs_untrained_b.max_a_to_b.mean < 0.95
    assert floors.untrained_a_vs_b.max_b_to_a.mean < 0.95
    assert floors.a_vs_basis_b.d_b == D_B and floors.basis_a_vs_b.d_a == D_A
    assert floors.a_vs_untrained_b.kind == "pair-floor-untrained"
    assert floors.basis_a_vs_b.kind == "pair-floor-rotation"
    # one model, layer and site: the runs' own floors are the pair's, nothing is measured
    assert pair_floors((runs[0], _run("a", 1)), (sae_a, sae_a), chunks_for, "stores", options, core) is None


def test_same_space_is_one_model_weights_layer_and_site():
    a = _run("m", 3)
    assert same_space(a, _run("m", 3))
    assert not same_space(a, _run("m", 4)) and not same_space(a, _run("n", 3))
    other_weights = _run("m", 3)
    other_weights.config["model_path"] = "/elsewhere"
    assert not same_space(a, other_weights)
