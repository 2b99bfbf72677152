"""Training the tiny config, determinism, the saved folder, loading by path and by name, the benchmarks."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from click.testing import CliRunner

from scircuits import ConfigError
from scircuits import SynthTrainSettings as TrainSettings
from scircuits import train_synth_model as train_model
from scircuits.cli import cli
from scircuits.platform.manager.plugin_set import get_plugins
from scircuits.plugins.synth.models import default_folder
from scircuits.plugins.synth.tasks import AdditionTask, LogicTask

TINY = {"layers": 1, "d_model": 32, "batch_size": 64, "eval_examples": 200}


@pytest.fixture(scope="module")
def tiny_logic(tmp_path_factory):
    """A tiny logic model trained through the CLI (seconds)."""
    out = tmp_path_factory.mktemp("synth") / "logic-tiny"
    args = ["synth", "train", "--task", "logic", "--size", "3", "--layers", "1", "--d-model", "32"]
    args += [
        "--steps",
        "150",
        "--batch-size",
        "64",
        "--lr",
        "3e-3",
        "--eval-every",
        "50",
        "--eval-examples",
        "200",
        "--max-attempts",
        "1",
    ]
    result = CliRunner().invoke(cli, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_tiny_training_writes_the_folder_and_accuracy_rises(tiny_logic):
    names = {p.name for p in tiny_logic.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "training.jsonl", "synth.json"} <= names
    curve = [json.loads(line) for line in (tiny_logic / "training.jsonl").read_text().splitlines()]
    assert [row["step"] for row in curve] == [0, 50, 100, 150]
    assert curve[-1]["heldout_accuracy"] > curve[0]["heldout_accuracy"] + 0.2
    assert curve[-1]["loss"] < curve[1]["loss"]
    info = json.loads((tiny_logic / "synth.json").read_text())
    assert info["task"] == "logic" and info["seed"] == 0 and info["size"] == 3
    assert info["heldout_accuracy"] == pytest.approx(curve[-1]["heldout_accuracy"])
    assert {"torch", "transformers", "scircuits"} <= set(info["versions"])
    assert info["settings"]["layers"] == 1 and info["train_cpu_s"] > 0
    assert [a["attempt"] for a in info["attempts"]] == [0] and info["weights_seed"] == 0
    assert all(row["attempt"] == 0 for row in curve)


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_training_is_deterministic_given_the_seed(tmp_path):
    task = AdditionTask(3)
    once = {"max_attempts": 1}
    settings = TrainSettings(steps=15, eval_every=15, **{**TINY, "eval_examples": 20}, **once)
    first = train_model(task, settings, tmp_path / "a")
    second = train_model(task, settings, tmp_path / "b")
    other = train_model(task, settings.model_copy(update={"seed": 1}), tmp_path / "c")
    a, b, c = _weights(tmp_path / "a"), _weights(tmp_path / "b"), _weights(tmp_path / "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert first["heldout_accuracy"] == second["heldout_accuracy"]
    assert other["seed"] == 1


def test_a_model_of_other_settings_is_moved_aside_not_overwritten(tiny_logic, tmp_path):
    folder = tmp_path / "logic-tiny"
    shutil.copytree(tiny_logic, folder)
    before = (folder / "synth.json").read_text()
    args = ["synth", "train", "--task", "logic", "--size", "3", "--layers", "1", "--d-model", "32"]
    args += ["--steps", "1", "--eval-every", "1", "--eval-examples", "10", "--out", str(folder)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    [aside] = tmp_path.glob("logic-tiny.superseded-*")
    assert (aside / "synth.json").read_text() == before


def test_a_training_that_diverges_or_fails_keeps_the_model_at_out(tiny_logic, tmp_path, monkeypatch, capsys):
    """The model of other settings at --out is moved aside only once the new one is trained: a loss
    that becomes NaN (lr 1e12) is one line and nothing moves, and so is a failure mid-training."""
    folder = tmp_path / "logic-tiny"
    shutil.copytree(tiny_logic, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    args = ["synth", "train", "--task", "logic", "--size", "3", "--layers", "1", "--d-model", "32"]
    args += ["--steps", "5", "--eval-every", "5", "--eval-examples", "10", "--out", str(folder)]
    from scircuits.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--lr", "1e12", "--max-attempts", "1"])
    assert exit_info.value.code == 2
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("Error")]
    assert "diverged: the loss is nan at step" in line and "lower --lr" in line, line
    from scircuits.platform.groundtruth import training

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_run_attempt", interrupted)
    assert CliRunner().invoke(cli, args).exit_code != 0
    assert not list(tmp_path.glob("logic-tiny.superseded-*"))
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before


def test_the_same_settings_over_damaged_weights_train_again_instead_of_keeping_them(tmp_path, caplog):
    import json
    import logging

    from scircuits.platform.common.provenance import file_sha256

    folder = tmp_path / "m"
    args = ["synth", "train", "--task", "logic", "--size", "3", "--layers", "1", "--d-model", "32"]
    args += ["--steps", "1", "--eval-every", "1", "--eval-examples", "10", "--out", str(folder)]
    assert CliRunner().invoke(cli, args).exit_code == 0
    info = json.loads((folder / "synth.json").read_text())
    assert info["weights_sha256"] == file_sha256(folder / "model.safetensors")
    with caplog.at_level(logging.INFO, logger="scircuits"):
        assert CliRunner().invoke(cli, args).exit_code == 0
    assert "already holds this model (same settings); kept it" in caplog.text
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:3000])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="scircuits"):
        assert CliRunner().invoke(cli, args).exit_code == 0
    assert "kept it" not in caplog.text
    assert file_sha256(weights) == json.loads((folder / "synth.json").read_text())["weights_sha256"]


def test_bad_settings_are_one_line_errors():
    from scircuits.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "train", "--task", "logic", "--size", "40", "--out", "/nonexistent/x"])
    assert exit_info.value.code == 2


def test_the_folder_loads_through_the_generic_adapter_and_matches_the_benchmark(tiny_logic):
    plugins = get_plugins()
    loaded = plugins.models.get(f"hf:{tiny_logic}").load()
    assert loaded.adapter.blocks_path == "model.layers" and loaded.n_layers == 1
    bench = plugins.benchmarks.get("synth-logic")
    example = next(iter(bench.examples(limit=1, options={"size": 3})))
    tok = loaded.tokenizer
    ids = tok(example.prompt)["input_ids"] + tok(example.target, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == example.meta["tokens"]
    with torch.no_grad():
        logits = loaded.model(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tok))


def test_the_named_model_loads_from_the_cache_or_says_how_to_train_it(tmp_path, monkeypatch, tiny_logic):
    monkeypatch.setenv("SCIRCUITS_CACHE", str(tmp_path))
    adapter = get_plugins().models.get("synth-logic")
    with pytest.raises(Exception, match="scircuits synth train --task logic"):
        adapter.load()
    target = default_folder("logic")
    target.parent.mkdir(parents=True)
    target.symlink_to(tiny_logic, target_is_directory=True)
    loaded = adapter.load()
    assert loaded.n_layers == 1 and loaded.adapter.name == "synth-logic"
    assert loaded.site_path(0, "resid") == "model.layers.0"


def test_benchmark_examples_carry_ground_truth_and_counterfactual_pairs():
    bench = get_plugins().benchmarks.get("synth-addition")
    examples = list(bench.examples(limit=5, options={"size": 3}))
    assert examples == list(bench.examples(limit=5, options={"size": 3}))
    for example in examples:
        meta = example.meta
        assert len(meta["variables"]) == len(meta["tokens"])
        assert " ".join(meta["tokens"][1:]) == f"{example.prompt}{example.target}"
        flipped = [c["variable"] for c in meta["counterfactuals"]]
        assert flipped and set(flipped) <= {"carry_in@1", "carry_in@2", "carry_in@3"}  # some cannot flip
        for record in meta["counterfactuals"]:
            assert record["depends"] == bool(meta["facts"]["carries"][int(record["variable"][-1])])
    pairs = list(bench.counterfactual_pairs(limit=2, options={"size": 3}))
    assert len(pairs) >= 2 and all(cf.prompt != original.prompt for original, cf, _ in pairs)
    train_keys = {e.meta["key"] for e in bench.examples(split="train", limit=50)}
    assert not train_keys & {e.meta["key"] for e in bench.examples(limit=50)}


def test_collect_traces_a_trained_synth_model_end_to_end(tiny_logic, tmp_path):
    from scircuits.store import ActivationStore

    out = tmp_path / "acts.zarr"
    args = ["collect", "--model", f"hf:{tiny_logic}", "--benchmark", "synth-logic", "--option", "size=3"]
    result = CliRunner().invoke(
        cli, [*args, "--layer", "0", "--limit", "20", "--out", str(out), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    example = next(iter(get_plugins().benchmarks.get("synth-logic").examples(limit=1, options={"size": 3})))
    store = ActivationStore(out)
    assert store.shape == (20 * len(example.meta["tokens"]), 32)


def test_the_ground_truth_analysis_scores_a_run_and_its_null_edit_is_exactly_null(tmp_path):
    """`scircuits run` on a synth benchmark: results.json and the report carry the ground-truth scores.

    Two blocks, the site the first: an edit at a step's `;` reaches the answer through the second
    block, so the real edit must move it while the null edit, through the same path, must not."""
    model = tmp_path / "logic-2x32"
    settings = TrainSettings(**{**TINY, "layers": 2}, steps=300, lr=3e-3, eval_every=100, max_attempts=1)
    train_model(LogicTask(3), settings, model)
    args = ["run", "--model", f"hf:{model}", "--benchmark", "synth-logic", "--option", "size=3"]
    args += ["--layer", "0", "--sae", "topk", "--expansion", "4", "--limit", "60", "--collect-limit", "400"]
    args += ["--train-tokens", "8000", "--train-batch-size", "256", "--top-k", "1,5"]
    args += ["--random-controls", "2", "--exact-top", "3", "--no-progress", "--out", str(tmp_path / "runs")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    run = next((tmp_path / "runs").iterdir())
    results = json.loads((run / "causal" / "results.json").read_text())
    assert "ground-truth" in results["analyses"]
    truth = results["ground_truth"]
    assert truth["task"] == "logic" and truth["examples"] == 60
    assert truth["labelled_tokens"] == 60 * 4  # three `;` and the query per problem
    assert set(truth["feature_recovery"]) == {"sae", "probe", "raw", "random-decoder"}
    labels = {r["label"] for r in truth["feature_recovery"]["sae"]["labels"]}
    assert {"value=0", "value=1", "negated=1", "answer=0"} <= labels
    for rec in truth["feature_recovery"].values():
        assert all(0.0 <= r["auroc"] <= 1.0 for r in rec["labels"])
    assert len(truth["specificity"]) == len(truth["null_edit"]) == 1  # logic declares `value` flips
    null = truth["null_edit"][0]
    assert null["features"] == [] and null["dependent"]["n"] > 0 and null["independent"]["n"] > 0
    for side in ("dependent", "independent"):
        assert null[side]["mean"] == 0.0 and not null[side]["excludes_zero"]
    assert not null["specific"]
    edit = truth["specificity"][0]
    assert edit["features"] and edit["dependent"]["n"] == null["dependent"]["n"]
    assert edit["dependent"]["mean"] != 0.0 or edit["independent"]["mean"] != 0.0  # the edit is live
    report = (run / "report.md").read_text()
    assert "Ground truth: recovery of the known variables" in report
    assert "ground truth:" in result.output


def test_more_threads_than_cpus_are_refused_before_any_folder_is_made(tmp_path):
    cpus = os.cpu_count() or 1
    with pytest.raises(ConfigError, match=rf"--threads {cpus + 1}: this machine has {cpus} CPUs"):
        train_model(AdditionTask(2), TrainSettings(threads=cpus + 1, steps=1), tmp_path / "m")
    assert not (tmp_path / "m").exists()
