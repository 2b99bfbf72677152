"""End to end: `scircuits run` on a tiny model (collect -> train -> ablate -> report), small limits."""

from __future__ import annotations

import json

import pytest

from scircuits.cli import main
from scircuits.testing import save_tiny_model, tiny_loaded_model


def test_scircuits_run_end_to_end_on_a_tiny_model(tmp_path, capsys):
    folder = save_tiny_model(tiny_loaded_model("smollm2-135m"), tmp_path / "tiny")
    out = tmp_path / "runs"
    main(
        [
            "run",
            "--model",
            f"hf:{folder}",
            "--layer",
            "2",
            "--limit",
            "16",
            "--collect-limit",
            "48",
            "--train-tokens",
            "6000",
            "--train-batch-size",
            "512",
            "--top-k",
            "1,4",
            "--random-controls",
            "2",
            "--exact-top",
            "3",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    run_dirs = list(out.iterdir())
    assert len(run_dirs) == 1 and run_dirs[0].name.endswith("__arithmetic__resid2")
    run = run_dirs[0]
    for artifact in (
        "activations.zarr",
        "sae/cfg.json",
        "sae/sae_weights.safetensors",
        "sae/train_log.jsonl",
        "causal/results.json",
        "causal/examples.jsonl",
        "report.md",
        "report.html",
        "pipeline.json",
    ):
        assert (run / artifact).exists(), artifact

    results = json.loads((run / "causal" / "results.json").read_text())
    assert results["n_examples"] == 16
    assert 0 <= results["splice"]["max_abs_logit_diff"] < 1e-4
    assert 0.0 <= results["baseline"]["accuracy"] <= 1.0 and results["baseline"]["logprob"] < 0
    assert results["reconstruction"]["ce_loss_recovered"] is not None
    assert [s["k"] for s in results["sweeps"]] == [1, 4]
    for sweep in results["sweeps"]:
        assert sweep["logprob_ci"][0] <= sweep["logprob_delta"] <= sweep["logprob_ci"][1]
        assert (
            sweep["control"]["logprob_ci"][0]
            <= sweep["control"]["logprob_delta"]
            <= sweep["control"]["logprob_ci"][1]
        )
    exact = [f for f in results["features"] if f["exact_logprob_delta"] is not None]
    assert len(exact) == 3
    assert results["features"][0]["top_tokens"], "contexts come from the store"
    assert results["contexts_source"] == "store"
    assert results["provenance"]["store"]["source"] == "traced"
    assert results["provenance"]["sae"]["weights_sha256"]
    assert len((run / "causal" / "examples.jsonl").read_text().splitlines()) == 16

    page = (run / "report.html").read_text()
    assert "data:image/png;base64," in page and "Feature importance" in page
    assert "report.html" in capsys.readouterr().out


def test_a_plugin_analysis_appears_in_results_and_report_without_a_core_edit(tmp_path):
    """The example plugin (examples/scircuits-example-plugin, this checkout's copy first on the path)
    adds the analysis `splice-agreement`; `scircuits run` writes its result and its report section."""
    from pathlib import Path

    from tests.cli_helpers import run_cli

    plugin_dir = Path(__file__).resolve().parents[1] / "examples" / "scircuits-example-plugin"
    folder = save_tiny_model(tiny_loaded_model("smollm2-135m"), tmp_path / "tiny")
    out = tmp_path / "runs"
    result = run_cli(
        "run",
        "--model",
        f"hf:{folder}",
        "--layer",
        "2",
        "--limit",
        "8",
        "--collect-limit",
        "24",
        "--train-tokens",
        "3000",
        "--train-batch-size",
        "512",
        "--top-k",
        "1",
        "--random-controls",
        "1",
        "--exact-top",
        "2",
        "--out",
        str(out),
        "--no-progress",
        extra_path=plugin_dir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    if "splice-agreement" not in run_cli("analyses", extra_path=plugin_dir).stdout:
        pytest.skip("scircuits-example-plugin is not installed (scripts/setup)")
    run = next(out.iterdir())
    results = json.loads((run / "causal" / "results.json").read_text())
    assert results["analyses"][-1] == "splice-agreement"
    agreement = results["splice_agreement"]
    assert agreement["examples"] == 8 and 0.0 <= agreement["same_correctness"] <= 1.0
    assert 0.0 <= agreement["mean_abs_logprob_change"] <= agreement["largest_logprob_change"]
    assert "Splice agreement (example plugin)" in (run / "report.md").read_text()
    assert "splice agreement:" in result.stdout
