"""--device and --model-dtype: what each command accepts, how it resolves, what the study records.

The GPU paths themselves run in bench/gpu.py on a machine with a GPU (README, 'On a GPU'); here, on
the CPU, the refusals, the dtype resolution and the study in bfloat16 on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from scircuits.platform.common.device import check_device
from scircuits.platform.config import AblateConfig
from scircuits.platform.config.stages import SPLICE_TOLERANCE, resolve_model_dtype
from scircuits.platform.contract.errors import ConfigError

NO_GPU = not torch.cuda.is_available()


@pytest.mark.skipif(not NO_GPU, reason="checks the refusal on a machine without a GPU")
def test_device_auto_without_a_gpu_explains_itself():
    with pytest.raises(ConfigError, match=r"--device auto splits the model over the visible GPUs.*none"):
        check_device("auto", allow_auto=True)


def test_device_auto_is_refused_where_no_model_is_loaded():
    with pytest.raises(ConfigError, match="this command holds no model: use cpu, cuda or cuda:N"):
        check_device("auto")


def test_model_dtype_auto_is_float32_on_the_cpu_and_bfloat16_on_a_gpu():
    assert resolve_model_dtype("auto", "cpu") == "float32"
    assert resolve_model_dtype("auto", "cuda") == "bfloat16"
    assert resolve_model_dtype("auto", "auto") == "bfloat16"
    assert resolve_model_dtype("float16", "cuda:1") == "float16"


def test_splice_tolerance_follows_the_model_dtype_unless_given():
    assert AblateConfig().resolved_splice_tolerance() == SPLICE_TOLERANCE["float32"] == 1e-3
    bf16 = AblateConfig(model_dtype="bfloat16")
    assert bf16.resolved_splice_tolerance() == SPLICE_TOLERANCE["bfloat16"]
    assert SPLICE_TOLERANCE["bfloat16"] > SPLICE_TOLERANCE["float32"]
    assert AblateConfig(model_dtype="bfloat16", splice_tolerance=0.5).resolved_splice_tolerance() == 0.5


def test_a_float32_study_hashes_as_before_the_dtype_setting():
    """The default study's identity holds the tolerance it always had (1e-3) and no model_dtype, so
    runs finished before the setting existed stay complete; another dtype is another study."""
    identity = AblateConfig().identity()
    assert "model_dtype" not in identity and identity["splice_tolerance"] == 1e-3
    assert AblateConfig(splice_tolerance=1e-3).config_hash() == AblateConfig().config_hash()
    assert AblateConfig(model_dtype="bfloat16").config_hash() != AblateConfig().config_hash()


def test_the_cli_refuses_auto_without_a_gpu_in_one_line(capsys, tmp_path):
    from scircuits.cli import main

    if not NO_GPU:
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit) as exit_info:
        main(["ablate", "--sae", str(tmp_path / "none"), "--device", "auto", "--out", str(tmp_path / "c")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device auto" in err[0], err
    assert not (tmp_path / "c").exists()


def test_train_refuses_auto(capsys, tmp_path, tmp_path_factory):
    from scircuits.cli import main
    from tests.dashboard_run import tiny_run

    store = str(tiny_run(tmp_path_factory) / "activations.zarr")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--store", store, "--device", "auto", "--out", str(tmp_path / "sae")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device auto" in err[0], err


def test_a_bfloat16_study_runs_checks_its_splice_and_records_the_dtype(tmp_path_factory, tmp_path):
    """On a tiny model: the study with --model-dtype bfloat16 loads the model in bfloat16, checks the
    splice at the bfloat16 tolerance, records the dtype in provenance and the splice record, and its
    effects stay close to the float32 study's."""
    from scircuits.cli import main
    from tests.dashboard_run import tiny_run

    run = tiny_run(tmp_path_factory)
    fp32 = json.loads((run / "causal" / "results.json").read_text())
    settings = ["--limit", "12", "--top-k", "1,4", "--random-controls", "2", "--exact-top", "3"]
    settings += ["--layer", "2"]
    model = fp32["provenance"]["model"]["model_id"]
    main(
        [
            "ablate",
            "--model",
            f"hf:{model}",
            "--sae",
            str(run / "sae"),
            "--model-dtype",
            "bfloat16",
            "--out",
            str(tmp_path / "bf16"),
            "--no-progress",
            *settings,
        ]
    )
    bf16 = json.loads((tmp_path / "bf16" / "results.json").read_text())
    assert bf16["provenance"]["model"]["dtype"] == "bfloat16"
    assert fp32["provenance"]["model"]["dtype"] == "float32"
    assert bf16["splice"]["dtype"] == "bfloat16"
    assert bf16["splice"]["tolerance"] == SPLICE_TOLERANCE["bfloat16"]
    assert bf16["splice"]["max_abs_logit_diff"] <= SPLICE_TOLERANCE["bfloat16"]
    assert bf16["config"]["model_dtype"] == "bfloat16"
    assert [s["k"] for s in bf16["sweeps"]] == [s["k"] for s in fp32["sweeps"]]
    for a, b in zip(fp32["sweeps"], bf16["sweeps"], strict=True):
        half_width = (a["logprob_ci"][1] - a["logprob_ci"][0]) / 2
        assert abs(b["logprob_delta"] - a["logprob_delta"]) <= half_width, (a["k"], a, b)
