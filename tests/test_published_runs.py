"""A run of a published SAE beside the native run it came from, on a tiny random model: the native
run's SAE written as a sparsify checkpoint into a hub cache and studied with `run --sae hf:...`
(no collection, no training); its dashboard traces the run's evaluation examples into
RUN/evaluation.zarr, and `compare` matches its features with the native run's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scircuits.cli import main
from scircuits.platform.manager.plugin_set import load_plugins
from scircuits.platform.train.checkpoint import load_sae
from scircuits.store import ActivationStore
from scircuits.testing import published as P
from tests.dashboard_run import tiny_run

PLUGINS = load_plugins(entry_points_too=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(native run, published run, hub cache) with HF_HUB_CACHE/HF_HUB_OFFLINE set while building."""
    native = tiny_run(tmp_path_factory)
    cache = tmp_path_factory.mktemp("hub")
    sae, _ = load_sae(native / "sae", PLUGINS)
    P.hub_repo(cache, "org/tiny-sparsify", P.sparsify_files(sae, "layers.2"))
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_CACHE", str(cache))
    mp.setenv("HF_HUB_OFFLINE", "1")
    model = json.loads((native / "causal" / "results.json").read_text())["config"]["model"]
    out = tmp_path_factory.mktemp("published-runs")
    main(
        [
            "run",
            "--model",
            model,
            "--sae",
            "hf:org/tiny-sparsify/layers.2",
            "--limit",
            "12",
            "--top-k",
            "1,4",
            "--random-controls",
            "2",
            "--exact-top",
            "3",
            "--no-ablate-reconstruction-gate",  # a briefly trained SAE on a random model
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    (published,) = [p for p in out.iterdir() if "__hf-" in p.name]
    yield native, published, cache
    mp.undo()


def test_the_dashboard_of_a_published_run_traces_its_evaluation_examples(runs, capsys):
    _, published, _ = runs
    assert not (published / "activations.zarr").exists() and not (published / "sae").exists()
    store = ActivationStore(published / "evaluation.zarr")  # written by the run's report stage
    results = json.loads((published / "causal" / "results.json").read_text())
    assert (store.attrs["layer"], store.attrs["site"], store.attrs["config"]["split"]) == (2, "resid", "test")
    assert len(store.unique_example_ids) == results["n_examples"] == 12
    manifest = json.loads((published / "dashboard" / "manifest.json").read_text())
    # one page per feature active on those tokens (position >= 1, as the scan skips the first)
    sae, _ = load_sae("hf:org/tiny-sparsify/layers.2", PLUGINS)
    f = sae.encode(torch.as_tensor(store.read_rows(0, store.shape[0])).float())
    active = int((f[store.positions >= 1] > 0).any(dim=0).sum())
    assert manifest["active_features"] == active > 0 and manifest["store"] == str(
        published / "evaluation.zarr"
    )

    def written():  # the store's arrays, file by file
        return {p: p.stat().st_mtime_ns for p in (published / "evaluation.zarr").rglob("*") if p.is_file()}

    before = written()
    main(["dashboard", str(published)])
    assert "pages" in capsys.readouterr().out
    # complete: not traced again (only the bookkeeping files beside the arrays are touched)
    arrays = [p for p in before if "acts" in p.parts or "token_ids" in p.parts]
    assert arrays and all(written()[p] == before[p] for p in arrays)


def test_compare_matches_a_published_run_with_the_native_run_it_came_from(runs, tmp_path):
    native, published, _ = runs
    out = tmp_path / "cmp"
    main(
        [
            "compare",
            str(native),
            str(published),
            "--out",
            str(out),
            "--no-train-twins",
            "--permutations",
            "19",
            "--no-progress",
        ]
    )
    results = json.loads((out / "results.json").read_text())
    (pair,) = results["pairs"]
    assert pair["comparison"]["d_a"] == pair["comparison"]["d_b"]
    # the same SAE read through sparsify's layout: every live latent matches its own copy
    matched = pair["comparison"]["max_a_to_b"]
    assert matched["n"] > 0 and matched["q10"] == pytest.approx(1.0, abs=1e-4)
    top = np.array([[p["a"], p["b"]] for p in pair["comparison"]["top_pairs"]])
    assert (top[:, 0] == top[:, 1]).all()
    assert Path(results["runs"][1]["path"]) == published


def test_a_given_sae_with_other_weights_under_the_same_spec_is_studied_again(tmp_path, monkeypatch):
    """`run --sae SPEC` chained its stages to the spec's text: new weights in the same folder, or a
    hub ref moved to a new commit, kept the old study ("up to date")."""
    from scircuits.platform.pipeline.run import sae_fingerprint
    from scircuits.platform.train.checkpoint import save_sae

    folder = tmp_path / "sae"
    save_sae(folder, P.random_sae(PLUGINS, "topk", 16, 32, seed=0), cfg={}, scircuits_meta={})
    first = sae_fingerprint(str(folder), PLUGINS)
    assert first == sae_fingerprint(str(folder), PLUGINS) and first.startswith("files:")
    save_sae(folder, P.random_sae(PLUGINS, "topk", 16, 32, seed=1), cfg={}, scircuits_meta={})
    assert sae_fingerprint(str(folder), PLUGINS) != first

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    old = P.hub_repo(
        cache, "org/s", P.sparsify_files(P.random_sae(PLUGINS, "topk", 16, 32, seed=0), "layers.2")
    )
    assert sae_fingerprint("hf:org/s/layers.2", PLUGINS) == f"commit:{old}"
    new = P.hub_repo(
        cache, "org/s", P.sparsify_files(P.random_sae(PLUGINS, "topk", 16, 32, seed=1), "layers.2")
    )
    assert new != old and sae_fingerprint("hf:org/s/layers.2", PLUGINS) == f"commit:{new}"
    assert sae_fingerprint("hf:org/missing/layers.2", PLUGINS) == "unresolved"


def test_run_refuses_a_published_sae_past_the_models_blocks_before_making_its_folder(
    tmp_path_factory, tmp_path, monkeypatch, capsys
):
    native = tiny_run(tmp_path_factory)
    model = json.loads((native / "causal" / "results.json").read_text())["config"]["model"]
    sae, _ = load_sae(native / "sae", PLUGINS)
    hook = "blocks.9.hook_resid_post"  # the tiny model has 4 blocks
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    P.hub_repo(tmp_path / "hub", "org/deep", P.saelens_files(sae, hook, hook))
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--model", model, "--sae", f"hf:org/deep/{hook}", "--out", str(tmp_path / "runs")])
    assert exit_info.value.code == 2
    assert "reads layer 9, but" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_training_settings_beside_a_given_sae_are_said_to_be_unused(tmp_path_factory, caplog):
    import logging

    from scircuits.platform.config.stages import RunConfig
    from scircuits.platform.pipeline.run import plan

    native = tiny_run(tmp_path_factory)
    model = json.loads((native / "causal" / "results.json").read_text())["config"]["model"]
    config = RunConfig(
        model=model,
        sae=str(native / "sae"),
        train_tokens=5000,
        sae_hparams={"k": 3},
        out=str(tmp_path_factory.mktemp("o")),
    )
    with caplog.at_level(logging.WARNING, logger="scircuits"):
        plan(config.with_plugin_defaults(PLUGINS), PLUGINS)
    assert "is studied as given (nothing is trained): --sae-option, --train-tokens not used" in caplog.text
