"""A command refused for a bad input leaves the artifact already at its --out where it was: train,
ablate and circuit check their inputs before they move a result of other settings aside, and `run`
redoes a stage whose folder still holds its lock file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from scircuits.cli import main
from scircuits.platform.common import artifacts
from tests.dashboard_run import tiny_run
from tests.test_write_path import snapshot


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory)


def refused(capsys, argv: list[str], needle: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert "Traceback" not in err and len(errors) == 1 and needle in errors[0], err


def unchanged(out: Path, before: dict[str, str]) -> None:
    assert snapshot(out) == before
    assert not list(out.parent.glob(f"{out.name}.superseded-*"))


def model_of(run: Path) -> str:
    results = json.loads((run / "causal" / "results.json").read_text())
    return f"hf:{results['provenance']['model']['model_id']}"


def test_train_with_a_k_too_large_keeps_the_checkpoint_at_out(run, tmp_path, capsys):
    out = tmp_path / "sae"
    shutil.copytree(run / "sae", out)
    before = snapshot(out)
    store = str(run / "activations.zarr")
    refused(capsys, ["train", "--store", store, "--out", str(out), "--sae-option", "k=100000"], "k=100000")
    unchanged(out, before)


def test_train_on_a_store_with_a_missing_file_keeps_the_checkpoint_at_out(run, tmp_path, capsys):
    store = tmp_path / "store.zarr"
    shutil.copytree(run / "activations.zarr", store)
    chunk = next(p for p in sorted((store / "acts").rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.unlink()
    out = tmp_path / "sae"
    shutil.copytree(run / "sae", out)
    before = snapshot(out)
    refused(capsys, ["train", "--store", str(store), "--out", str(out)], "missing")
    unchanged(out, before)


def test_ablate_with_a_bad_ablation_option_keeps_the_results_at_out(run, tmp_path, capsys):
    out = tmp_path / "causal"
    shutil.copytree(run / "causal", out)
    before = snapshot(out)
    argv = ["ablate", "--model", model_of(run), "--sae", str(run / "sae"), "--out", str(out), "--limit", "8"]
    refused(capsys, [*argv, "--no-progress", "--ablation-option", "foo=1"], "foo")
    unchanged(out, before)


def test_ablate_with_a_missing_model_path_keeps_the_results_at_out(run, tmp_path, capsys):
    out = tmp_path / "causal"
    shutil.copytree(run / "causal", out)
    before = snapshot(out)
    argv = ["ablate", "--model", "smollm2-135m", "--sae", str(run / "sae"), "--out", str(out)]
    refused(capsys, [*argv, "--model-path", str(tmp_path / "nowhere"), "--no-progress"], "nowhere")
    unchanged(out, before)


def test_circuit_with_a_missing_sae_keeps_the_circuit_at_out(run, tmp_path, capsys):
    out = tmp_path / "circuit"
    out.mkdir()
    artifacts.write_marker(out, "circuit", "earlier-settings")
    (out / "results.json").write_text('{"earlier": true}\n')
    before = snapshot(out)
    sae = str(run / "sae")
    missing = str(tmp_path / "no-such-sae")
    refused(
        capsys,
        ["circuit", "--model", model_of(run), "--sae", sae, "--sae", missing, "--out", str(out)],
        "no-such-sae",
    )
    unchanged(out, before)


def test_a_finished_ablate_moves_results_of_other_settings_aside(run, tmp_path, capsys):
    out = tmp_path / "causal"
    shutil.copytree(run / "causal", out)
    before = snapshot(out)
    argv = ["ablate", "--model", model_of(run), "--sae", str(run / "sae"), "--out", str(out), "--no-progress"]
    main(
        [*argv, "--limit", "8", "--top-k", "1", "--random-controls", "2", "--exact-top", "2", "--layer", "2"]
    )
    [aside] = out.parent.glob("causal.superseded-*")
    assert snapshot(aside) == before
    assert json.loads((out / "results.json").read_text())["config"]["top_k"] == [1]


def test_run_redoes_a_stage_whose_folder_holds_its_lock_file(run, tmp_path):
    """A finished run's stage folders keep their lock files; a changed setting redoes the study with
    the old one moved aside whole (this used to crash on 'Directory not empty')."""
    out = tmp_path / "runs"
    shutil.copytree(run.parent, out)
    copy = out / run.name
    assert (copy / "causal" / artifacts.LOCK_FILE).exists()
    before = snapshot(copy / "causal")
    argv = ["run", "--model", model_of(run), "--layer", "2", "--limit", "12", "--collect-limit", "40"]
    argv += ["--train-tokens", "4000", "--train-batch-size", "512", "--expansion", "2", "--top-k", "1"]
    main([*argv, "--random-controls", "2", "--exact-top", "3", "--out", str(out), "--no-progress"])
    [aside] = copy.glob("causal.superseded-*")
    assert snapshot(aside) == before
    assert json.loads((copy / "causal" / "results.json").read_text())["config"]["top_k"] == [1]
    assert not list(copy.glob("sae.superseded-*"))  # train's settings did not change


def test_run_trains_for_whole_epochs_with_train_epochs(run, tmp_path):
    """`run --train-epochs N` trains N passes over the collected training split (it was refused)."""
    out = tmp_path / "runs"
    shutil.copytree(run.parent, out)
    copy = out / run.name
    argv = ["run", "--model", model_of(run), "--layer", "2", "--limit", "12", "--collect-limit", "40"]
    argv += ["--train-epochs", "2", "--train-batch-size", "512", "--expansion", "2", "--top-k", "1"]
    main([*argv, "--random-controls", "2", "--exact-top", "3", "--out", str(out), "--no-progress"])
    meta = json.loads((copy / "sae" / "scircuits.json").read_text())
    assert meta["train_config"]["epochs"] == 2 and meta["train_config"]["tokens"] is None
    assert list(copy.glob("sae.superseded-*"))  # the token-trained SAE moved aside, not overwritten
    per_pass = meta["token_exclusion"]["rows"] // 512  # whole batches of the training rows
    assert per_pass >= 2 and meta["steps"] == 2 * per_pass and meta["tokens"] == 2 * per_pass * 512, meta
