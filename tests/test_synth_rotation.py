"""The residual rotation of a synth model: the same function, recorded, refusing bad input."""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from scircuits import SynthTrainSettings, rotate_residual, rotate_synth_model, synth_tasks, train_synth_model
from scircuits.cli import cli, main
from scircuits.platform.groundtruth.rotation import haar_orthogonal
from scircuits.platform.groundtruth.tokenizer import build_tokenizer, encode_problem_ids

ROOT = Path(__file__).resolve().parents[1]
TASK = synth_tasks().get("addition").sized(1)
TINY = {"layers": 2, "d_model": 32, "batch_size": 32, "eval_examples": 20, "max_attempts": 1}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A briefly trained 2 x 32 addition model whose norm gains are made far from 1 (so the fold acts)."""
    from transformers import LlamaForCausalLM

    folder = tmp_path_factory.mktemp("rot") / "add1"
    train_synth_model(TASK, SynthTrainSettings(**TINY, steps=20, eval_every=20), folder)
    model = LlamaForCausalLM.from_pretrained(folder)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(0.2 + 2 * torch.rand(param.shape, generator=generator))
    model.save_pretrained(folder)
    return folder


def _ids(n: int = 60) -> torch.Tensor:
    tokenizer = build_tokenizer(TASK)
    problems = TASK.heldout_problems(n) + list(itertools.islice(TASK.problems("train", seed=0), n))
    return torch.tensor([encode_problem_ids(tokenizer, p.tokens) for p in problems])


def test_haar_orthogonal_is_orthogonal_and_seeded():
    r = haar_orthogonal(16, 3)
    assert torch.allclose(r @ r.T, torch.eye(16, dtype=torch.float64), atol=1e-12)
    assert torch.equal(r, haar_orthogonal(16, 3)) and not torch.equal(r, haar_orthogonal(16, 4))


def test_rotation_keeps_the_function_and_moves_the_basis(tiny_model: Path):
    from transformers import LlamaForCausalLM

    original = LlamaForCausalLM.from_pretrained(tiny_model).double().eval()
    rotated = LlamaForCausalLM.from_pretrained(tiny_model).double().eval()
    rot = rotate_residual(rotated, seed=5)
    ids = _ids()
    with torch.no_grad():
        before = original(input_ids=ids, output_hidden_states=True)
        after = rotated(input_ids=ids, output_hidden_states=True)
    scale = before.logits.abs().max()
    assert (before.logits - after.logits).abs().max() <= 1e-5 * scale  # RMSNorm computes in float32
    assert all(
        float(n.weight.detach().min()) == float(n.weight.detach().max()) == 1.0
        for n in rotated.modules()
        if type(n).__name__ == "LlamaRMSNorm"
    )
    # the residual stream is the original's times R, and no longer the original's coordinates
    h0, h1 = before.hidden_states[1], after.hidden_states[1]
    assert torch.allclose(h0 @ rot, h1, atol=1e-4 * float(h0.abs().max()))
    assert (h0 - h1).abs().max() > 0.1 * h0.abs().max()


def test_rotated_folder_records_provenance_and_loads_as_a_synth_model(tiny_model: Path, tmp_path: Path):
    out = tmp_path / "rotated"
    result = CliRunner().invoke(cli, ["synth", "rotate", str(tiny_model), "--seed", "7", "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "synth.json").read_text())
    rotation = record["rotation"]
    assert rotation["seed"] == 7 and "folded" in rotation["fold"] and rotation["source"] == str(tiny_model)
    assert rotation["checked_on"].startswith("18 held-out problems of task addition")
    assert 0 <= rotation["max_abs_logit_diff"] <= 1e-5 * rotation["max_abs_logit"] + 1e-6
    assert record["task"] == "addition" and record["settings"]["d_model"] == 32
    assert (out / "tokenizer.json").is_file() and (out / "training.jsonl").is_file()
    source_json = (tiny_model / "synth.json").read_text()
    # a second rotation of the rotated folder keeps the first in `previous`; the source is untouched
    again = rotate_synth_model(out, tmp_path / "twice", seed=8, task=TASK)
    assert again["rotation"]["previous"]["seed"] == 7
    assert (tiny_model / "synth.json").read_text() == source_json
    # the rotated folder is a model like any other for the synth benchmark's loader
    from scircuits.plugins.synth.models import SynthModelAdapter

    loaded = SynthModelAdapter.for_task("addition").load(model_path=str(out))
    assert loaded.d_model == 32 and loaded.n_layers == 2


def test_bad_input_is_one_line_and_exit_2(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    def refused(*args: str) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(["synth", "rotate", *args])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    existing = tmp_path / "exists"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert "exists" in refused(str(tiny_model), "--seed", "0", "--out", str(existing))
    assert (existing / "keep.txt").read_text() == "mine" and len(list(existing.iterdir())) == 1
    missing = str(tmp_path / "missing")
    assert "not a synth model" in refused(missing, "--seed", "0", "--out", str(tmp_path / "a"))
    assert "inside" in refused(str(tiny_model), "--seed", "0", "--out", str(tiny_model / "sub"))
    assert "x>=0" in refused(str(tiny_model), "--seed", "-1", "--out", str(tmp_path / "b"))
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "synth.json").write_text((tiny_model / "synth.json").read_text())
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert "Llama" in refused(str(other), "--seed", "0", "--out", str(tmp_path / "c"))
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_model, truncated)
    (truncated / "model.safetensors").write_bytes((truncated / "model.safetensors").read_bytes()[:3000])
    assert "weights cannot be read" in refused(str(truncated), "--seed", "0", "--out", str(tmp_path / "d"))
    (truncated / "synth.json").write_text((tiny_model / "synth.json").read_text()[:50])
    assert "synth.json is not valid JSON" in refused(
        str(truncated), "--seed", "0", "--out", str(tmp_path / "e")
    )
    assert not any((tmp_path / n).exists() for n in ("a", "b", "c", "d", "e"))


def test_discriminate_scores_a_rotated_model(tiny_model: Path, tmp_path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("synth_recovery", ROOT / "bench" / "synth_recovery.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "rotated"
    rotate_synth_model(tiny_model, out, seed=1, task=TASK)
    report = tmp_path / "disc.json"
    args = {
        "model_dir": str(out),
        "problems": 60,
        "seed": 1,
        "both_splits": True,
        "expansion": 4,
        "k": 8,
        "decoder_seeds": [0, 1],
    }
    bench.discriminate(argparse.Namespace(**args, out=str(report)))
    sites = json.loads(report.read_text())["sites"]
    assert set(sites) == {"block 0", "block 1"}
    labels = sites["block 0"]["labels"]
    assert "carry_out=1" in labels and 0 <= labels["carry_out=1"]["raw"] <= 1
    floor = labels["carry_out=1"]
    assert len(floor["random_decoder_seeds"]) == 2
    assert floor["random_decoder"] == max(floor["random_decoder_seeds"])
    assert set(sites["block 0"]["probe_readable"]) <= set(labels)
    interchange = sites["block 0"]["interchange"]["carry_in"]
    assert interchange["pairs"] > 0 and 0 <= interchange["mean_difference_direction"] <= 1
