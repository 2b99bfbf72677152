"""The example third-party package in examples/ is installed (scripts/setup) and used like any plugin."""

from __future__ import annotations

import json

import pytest
import torch

from scircuits.platform.manager.plugin_set import load_plugins
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
    assert example["registered"] == {"benchmarks": ["capitals"], "ablations": ["sign-flip"]}
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
