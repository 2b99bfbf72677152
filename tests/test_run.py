"""End to end: `scircuits run` on a tiny model (collect -> train -> ablate -> report), small limits."""

from __future__ import annotations

import json

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
