"""The example third-party package in examples/ is found through its entry point and used like any plugin.

scripts/setup installs it (pip install -e examples/scircuits-example-plugin). Where it is not
installed, the tests lay it out themselves as an installed distribution would be (its package and a
.dist-info folder with its entry point, both read from examples/) in a folder put on the path, so
they test the same discovery either way.
"""

from __future__ import annotations

import json
import shutil
import sys
from importlib.metadata import PackageNotFoundError, distribution, distributions
from pathlib import Path

import pytest
import torch

from scircuits.cli import main
from scircuits.platform.manager.plugin_set import load_plugins
from scircuits.testing import save_tiny_model, tiny_loaded_model
from tests.cli_helpers import run_cli

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "scircuits-example-plugin"


def lay_out_as_installed(site: Path) -> Path:
    """``site`` holding the example package and its .dist-info (name, version, entry points)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    shutil.copytree(EXAMPLE / "scircuits_example_plugin", site / "scircuits_example_plugin")
    dist_info = site / f"scircuits_example_plugin-{project['version']}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n", encoding="utf-8"
    )
    groups = project["entry-points"]
    lines = [
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for group, eps in groups.items()
    ]
    (dist_info / "entry_points.txt").write_text("\n".join(lines), encoding="utf-8")
    return site


@pytest.fixture(scope="module")
def example_site(tmp_path_factory):
    """None when the distribution is installed; else a folder to put on the path (here and in the CLI)."""
    try:
        distribution("scircuits-example-plugin")
        yield None
        return
    except PackageNotFoundError:
        pass
    site = lay_out_as_installed(tmp_path_factory.mktemp("example-site"))
    sys.path.insert(0, str(site))
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        for name in [m for m in sys.modules if m.split(".")[0] == "scircuits_example_plugin"]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def plugins(example_site):
    loaded = load_plugins()
    assert "example" in loaded.plugins, "the example plugin's entry point was not found"
    assert loaded.plugins["example"].error is None, loaded.plugins["example"].error
    return loaded


def test_the_laid_out_distribution_is_the_examples_project(tmp_path):
    site = lay_out_as_installed(tmp_path)
    (dist,) = list(distributions(path=[str(site)]))
    assert dist.metadata["Name"] == "scircuits-example-plugin"
    assert [(ep.group, ep.name, ep.value) for ep in dist.entry_points] == [
        ("scircuits", "example", "scircuits_example_plugin")
    ]


def test_cli_lists_the_example_plugin(example_site):
    def listing(command: str) -> list[dict]:
        result = run_cli(command, "--json", extra_path=example_site)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    example = next(r for r in listing("plugins") if r["name"] == "example")
    assert example["distribution"] == "scircuits-example-plugin" and example["error"] is None
    assert example["registered"] == {
        "models": ["example-qwen2"],
        "benchmarks": ["capitals"],
        "saes": ["tied-relu"],
        "ablations": ["sign-flip"],
        "analyses": ["splice-agreement"],
    }
    benches = {r["name"]: r for r in listing("benchmarks")}
    assert benches["capitals"]["plugin"] == "example"
    assert "sign-flip" in {r["name"] for r in listing("ablations")}


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


def test_scircuits_run_end_to_end_with_all_five_example_extensions(tmp_path):
    """A third-party package written only against `scircuits` adds an architecture the core never
    names (Qwen2, loaded from a local folder), a benchmark, an ablation, an SAE variant and an
    analysis; one `scircuits run` uses all five."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from scircuits.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    folder = tmp_path / "qwen2"
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "runs"
    args = ["run", "--model", "example-qwen2", "--model-path", str(folder), "--layer", "2"]
    args += ["--benchmark", "capitals", "--ablation", "sign-flip", "--sae", "tied-relu", "--limit", "12"]
    args += ["--collect-limit", "24", "--train-tokens", "3000", "--train-batch-size", "256", "--top-k", "1,2"]
    main([*args, "--random-controls", "2", "--exact-top", "2", "--out", str(out), "--no-progress"])
    (run,) = out.iterdir()
    results = json.loads((run / "causal" / "results.json").read_text())
    assert results["config"]["model"] == "example-qwen2" and results["config"]["benchmark"] == "capitals"
    assert results["config"]["ablation"] == "sign-flip"
    assert json.loads((run / "sae" / "scircuits.json").read_text())["variant"] == "tied-relu"
    assert "splice-agreement" in results["analyses"] and results["splice_agreement"]["examples"] > 0
    assert 0 <= results["splice"]["max_abs_logit_diff"] < 1e-4
    assert "Splice agreement" in (run / "report.md").read_text()
