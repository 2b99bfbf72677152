"""The study on a CUDA GPU, against the same study on the CPU (skipped where torch sees no GPU; CI has
none, bench/gpu.py and a machine with one run it: README, 'On a GPU')."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SETTINGS = ["--limit", "12", "--top-k", "1,4", "--random-controls", "2", "--exact-top", "3", "--layer", "2"]


def ablate(run, out, *extra: str) -> dict:
    from scircuits.cli import main

    model = json.loads((run / "causal" / "results.json").read_text())["provenance"]["model"]["model_id"]
    where = ["--model", f"hf:{model}", "--sae", str(run / "sae"), "--out", str(out)]
    main(["ablate", *where, "--no-progress", *SETTINGS, *extra])
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_the_study_on_the_gpu_matches_the_cpu_study(tmp_path_factory, tmp_path, device):
    """The same SAE and examples: float32 on the GPU (one device, or the model placed by
    device_map='auto') ranks the same features and measures the same effects as on the CPU."""
    from tests.dashboard_run import tiny_run

    run = tiny_run(tmp_path_factory)
    cpu = json.loads((run / "causal" / "results.json").read_text())
    gpu = ablate(run, tmp_path / device, "--device", device)
    assert gpu["splice"]["max_abs_logit_diff"] <= 1e-3
    for a, b in zip(cpu["sweeps"], gpu["sweeps"], strict=True):
        assert a["features"] == b["features"]
        assert b["logprob_delta"] == pytest.approx(a["logprob_delta"], abs=1e-3)


def test_a_bfloat16_study_on_the_gpu_passes_its_splice_check(tmp_path_factory, tmp_path):
    from scircuits.platform.config.stages import SPLICE_TOLERANCE
    from tests.dashboard_run import tiny_run

    run = tiny_run(tmp_path_factory)
    bf16 = ablate(run, tmp_path / "bf16", "--device", "cuda", "--model-dtype", "bfloat16")
    assert bf16["splice"]["dtype"] == "bfloat16"
    assert bf16["splice"]["max_abs_logit_diff"] <= SPLICE_TOLERANCE["bfloat16"]
    assert bf16["provenance"]["model"]["dtype"] == "bfloat16"


def test_run_collects_trains_and_studies_on_the_gpu(tmp_path):
    """collect, train and ablate with --device cuda through `scircuits run` (the store in bfloat16,
    the model's dtype on a GPU by default)."""
    from scircuits.cli import main
    from scircuits.store import ActivationStore
    from scircuits.testing import save_tiny_model, tiny_loaded_model

    folder = save_tiny_model(tiny_loaded_model("smollm2-135m"), tmp_path / "tiny")
    out = tmp_path / "runs"
    main(["run", "--model", f"hf:{folder}", "--device", "cuda", "--collect-limit", "40", "--train-tokens",
          "4000", "--train-batch-size", "512", "--expansion", "2", "--out", str(out), "--no-progress",
          *SETTINGS])  # fmt: skip
    (run,) = list(out.iterdir())
    assert ActivationStore(str(run / "activations.zarr")).attrs["model_dtype"] == "bfloat16"
    results = json.loads((run / "causal" / "results.json").read_text())
    assert results["provenance"]["model"]["dtype"] == "float32"
    assert results["splice"]["max_abs_logit_diff"] <= 1e-3
