"""--study-dtype: the conditions' upper blocks in bfloat16 (autocast), where the hardware has it.

This CPU may have no native bfloat16; the study's numbers in bfloat16 are the same emulated, so the
tests that run a bfloat16 study stand in for the hardware check (``bf16_hardware``) with monkeypatch."""

from __future__ import annotations

import json

import pytest
import torch

from scircuits.platform.causal.study import splice_verdict
from scircuits.platform.common import device
from scircuits.platform.config import AblateConfig, RunConfig
from scircuits.platform.config.stages import SPLICE_TOLERANCE, STUDY_TOLERANCE
from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.model.splice import SpliceError, SplitModel, spliced_output
from scircuits.testing import tiny_loaded_model
from tests.test_splice import ARCHITECTURES, padded_batch, random_sae


@pytest.fixture
def no_bf16(monkeypatch):
    monkeypatch.setattr(device, "bf16_hardware", lambda name: None)


@pytest.fixture
def emulated_bf16(monkeypatch):
    monkeypatch.setattr(device, "bf16_hardware", lambda name: "emulated (test)")


def test_float32_is_the_default_and_hashes_as_before_the_setting():
    assert AblateConfig().study_dtype == "float32"
    assert "study_dtype" not in AblateConfig().identity()
    assert AblateConfig(study_dtype="float32").config_hash() == AblateConfig().config_hash()
    assert AblateConfig(study_dtype="bfloat16").config_hash() != AblateConfig().config_hash()
    assert RunConfig(study_dtype="bfloat16").ablate.study_dtype == "bfloat16"  # `run --study-dtype`


def test_the_fast_path_tolerance_follows_the_study_dtype_unless_given():
    assert AblateConfig().resolved_fast_path_tolerance() == SPLICE_TOLERANCE["float32"]
    bf16 = AblateConfig(study_dtype="bfloat16")
    assert bf16.resolved_splice_tolerance() == SPLICE_TOLERANCE["float32"]  # the splice itself: float32
    assert bf16.resolved_fast_path_tolerance() == STUDY_TOLERANCE["bfloat16"]
    given = AblateConfig(study_dtype="bfloat16", splice_tolerance=0.01)
    assert given.resolved_fast_path_tolerance() == 0.01


def test_unsupported_hardware_and_remote_are_refused_in_one_line(no_bf16):
    device.check_study_dtype("float32", "cpu")
    with pytest.raises(ConfigError, match=r"--study-dtype bfloat16: device cpu has no native bfloat16") as e:
        device.check_study_dtype("bfloat16", "cpu")
    assert "\n" not in str(e.value) and "use --study-dtype float32" in str(e.value)
    with pytest.raises(ConfigError, match="not on NDIF"):
        device.check_study_dtype("bfloat16", "cpu", remote=True)


@pytest.mark.parametrize("command", ["ablate", "run"])
def test_the_cli_refuses_bfloat16_without_the_hardware_in_one_line(command, no_bf16, capsys, tmp_path):
    from scircuits.cli import main

    args = ["--sae", str(tmp_path / "none")] if command == "ablate" else []
    with pytest.raises(SystemExit) as exit_info:
        main([command, *args, "--study-dtype", "bfloat16", "--out", str(tmp_path / "out"), "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--study-dtype bfloat16" in err[0] and "native bfloat16" in err[0], err
    assert not (tmp_path / "out").exists()


def test_the_splice_verdict_checks_the_fast_path_at_its_own_tolerance():
    worst = (1e-5, 0.3, 0.4)
    with pytest.raises(SpliceError):
        splice_verdict(worst, 16, 4, 1e-3, "nnsight", "beyond", "float32")
    record = splice_verdict(
        worst, 16, 4, 1e-3, "nnsight", "beyond", "float32", fast_tolerance=1.0, study_dtype="bfloat16"
    )
    assert record["tolerance"] == 1e-3 and record["fast_path_tolerance"] == 1.0
    assert record["study_dtype"] == "bfloat16"
    with pytest.raises(SpliceError):  # the splice itself stays at the model's tolerance
        splice_verdict((0.01, 0.0, 0.0), 16, 4, 1e-3, "nnsight", "beyond", "float32", fast_tolerance=1.0)
    with pytest.raises(SpliceError):  # NaN fails
        splice_verdict((0.0, float("nan"), 0.0), 16, 4, 1e-3, "m", "x", "float32", fast_tolerance=1.0)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_bfloat16_upper_blocks_are_close_to_float32_and_read_out_in_float32(architecture):
    """Every architecture runs its upper blocks under bfloat16 autocast at every site; the logits come
    back float32, differ from float32's (the products really ran in bfloat16) and stay close."""
    loaded = tiny_loaded_model(architecture)
    sae = random_sae(loaded.d_model)
    batch = padded_batch()
    mask = batch.attention_mask.bool()
    for site in ("resid", "mlp", "attn"):
        split = SplitModel(loaded, 1, site, study_dtype=torch.bfloat16)
        cache = split.lower(batch)
        value = spliced_output(sae, cache.site_output)
        with torch.no_grad():
            fp32 = split.upper(batch, cache, value, all_positions=True)
            bf16 = split.upper(batch, cache, value, all_positions=True, dtype=torch.bfloat16)
        assert bf16.dtype == torch.float32 and bool(torch.isfinite(bf16).all()), (architecture, site)
        diff = float((bf16 - fp32)[mask].abs().max())
        assert 0 < diff < STUDY_TOLERANCE["bfloat16"], (architecture, site, diff)


def test_a_bfloat16_study_runs_checks_its_splice_at_the_dtype_tolerance_and_records_it(
    tmp_path_factory, tmp_path, emulated_bf16
):
    """On a tiny model: `ablate --study-dtype bfloat16` runs every condition in bfloat16, checks the
    fast path at the bfloat16 tolerance (the splice itself at float32's), records the dtype in the
    config, the splice record and provenance, and its effects stay within the float32 intervals."""
    from scircuits.cli import main
    from tests.dashboard_run import tiny_run

    run = tiny_run(tmp_path_factory)
    fp32 = json.loads((run / "causal" / "results.json").read_text())
    settings = ["--limit", "12", "--top-k", "1,4", "--random-controls", "2", "--exact-top", "3"]
    model = fp32["provenance"]["model"]["model_id"]
    out = tmp_path / "bf16"
    main(
        [
            *("ablate", "--model", f"hf:{model}", "--sae", str(run / "sae"), "--layer", "2"),
            *("--study-dtype", "bfloat16", "--out", str(out), "--no-progress", *settings),
        ]
    )
    bf16 = json.loads((out / "results.json").read_text())
    assert bf16["config"]["study_dtype"] == "bfloat16" and bf16["config_hash"] != fp32["config_hash"]
    assert bf16["provenance"]["study_dtype"]["dtype"] == "bfloat16"
    assert bf16["provenance"]["study_dtype"]["hardware"] == "emulated (test)"
    assert fp32["provenance"]["study_dtype"] == {"dtype": "float32"}
    splice = bf16["splice"]
    assert splice["study_dtype"] == "bfloat16"
    assert splice["tolerance"] == SPLICE_TOLERANCE["float32"]
    assert splice["fast_path_tolerance"] == STUDY_TOLERANCE["bfloat16"]
    assert splice["max_abs_logit_diff"] <= SPLICE_TOLERANCE["float32"]  # nnsight in float32
    assert 0 < splice["fast_path_max_abs_diff"] <= STUDY_TOLERANCE["bfloat16"]  # it ran in bfloat16
    assert fp32["splice"]["fast_path_max_abs_diff"] <= SPLICE_TOLERANCE["float32"]
    assert [s["k"] for s in bf16["sweeps"]] == [s["k"] for s in fp32["sweeps"]]
    for a, b in zip(fp32["sweeps"], bf16["sweeps"], strict=True):
        half_width = (a["logprob_ci"][1] - a["logprob_ci"][0]) / 2
        assert abs(b["logprob_delta"] - a["logprob_delta"]) <= half_width, (a["k"], a, b)
    rows = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
    assert rows and "splice" in next(row for row in rows if row["evaluation"])["scores"]


def test_an_unknown_study_dtype_is_refused_in_one_line(capsys, tmp_path):
    from scircuits.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["ablate", "--sae", str(tmp_path), "--study-dtype", "float16", "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--study-dtype" in err[0] and "float16" in err[0], err
