"""The example third-party package in examples/ is installed (scripts/setup) and used like any plugin."""

from __future__ import annotations

import json

import pytest
import torch

from scircuits.cli import main
from scircuits.platform.manager.plugin_set import load_plugins
from scircuits.testing import save_tiny_model, tiny_loaded_model
from tests.cli_helpers import run_cli


@pytest.fixture(scope="module")
def plugins():
    loaded = load_plugins()
    if "example" not in loaded.plugins:
        pytest.fail(
            "scircuits-example-plugin is not installed: run scripts/setup "
            "(pip install -e examples/scircuits-example-plugin)"
        )
    return loaded


def test_cli_lists_the_example_plugin():
    rows = json.loads(run_cli("plugins", "--json").stdout)
    example = next(r for r in rows if r["name"] == "example")
    assert example["distribution"] == "scircuits-example-plugin" and example["error"] is None
    assert example["registered"] == {
        "benchmarks": ["capitals"],
        "saes": ["tied-relu"],
        "ablations": ["sign-flip"],
    }
    benches = {r["name"]: r for r in json.loads(run_cli("benchmarks", "--json").stdout)}
    assert benches["capitals"]["plugin"] == "example"
    assert "sign-flip" in {r["name"] for r in json.loads(run_cli("ablations", "--json").stdout)}


def test_example_benchmark_through_the_registry(plugins):
    bench = plugins.benchmarks.get("capitals")
    examples = list(bench.examples(limit=5, seed=1))
    assert len(examples) == 5 and examples == list(bench.examples(limit=5, seed=1))
    assert examples[0].prompt.endswith("The capital of Austria is") and examples[0].target == " Vienna"
    assert examples[0].prompt.count("The capital of") == 3  # two shots by default


def test_example_ablation_through_the_registry(plugins):
    acts = torch.randn(3, 8)
    idx = torch.tensor([2, 5])
    out = plugins.ablations.get("sign-flip").apply(acts, idx)
    assert torch.equal(out[:, idx], -acts[:, idx])
    assert torch.equal(out[:, [0, 1, 3, 4, 6, 7]], acts[:, [0, 1, 3, 4, 6, 7]])


def test_example_sae_variant_is_tied_while_training_and_saved_untied(plugins):
    variant = plugins.saes.get("tied-relu")
    sae = variant.build(8, 16)
    assert "W_enc" not in dict(sae.named_parameters())  # one weight matrix
    x = torch.randn(4, 8)
    assert torch.allclose(sae.encode(x), torch.relu((x - sae.b_dec) @ sae.W_dec.t() + sae.b_enc))
    sae.fold_input_scale(2.0)
    assert torch.allclose(sae.W_enc, 2.0 * (sae.W_dec * 2.0).t())  # untied: encoder x2, decoder /2


def test_scircuits_run_end_to_end_with_the_example_sae_variant(tmp_path):
    folder = save_tiny_model(tiny_loaded_model("smollm2-135m"), tmp_path / "tiny")
    out = tmp_path / "runs"
    args = ["run", "--model", f"hf:{folder}", "--layer", "2", "--sae", "tied-relu", "--limit", "8"]
    args += ["--collect-limit", "32", "--train-tokens", "3000", "--train-batch-size", "256", "--top-k", "1,2"]
    main([*args, "--random-controls", "1", "--exact-top", "2", "--out", str(out), "--no-progress"])
    (run,) = out.iterdir()
    meta = json.loads((run / "sae" / "scircuits.json").read_text())
    assert meta["variant"] == "tied-relu" and meta["complete"]
    results = json.loads((run / "causal" / "results.json").read_text())
    assert results["n_examples"] == 8
    assert 0 <= results["splice"]["max_abs_logit_diff"] < 1e-4  # the tied SAE splices exactly
    assert [s["k"] for s in results["sweeps"]] == [1, 2]
    assert (run / "report.html").is_file()
