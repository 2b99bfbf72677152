"""A complete SAE checkpoint whose weights file is damaged (truncated) is not up to date: train (and
`run`'s train stage) refuse it in one line naming --force, and --force moves it aside and trains again."""

from __future__ import annotations

import shutil

import pytest

from scircuits.cli import main
from scircuits.platform.train import checkpoint as ckpt
from tests.dashboard_run import tiny_run
from tests.test_write_path import one_line_error, snapshot

RUN_ARGS = [
    "--layer", "2", "--limit", "12", "--collect-limit", "40", "--train-tokens", "4000",
    "--train-batch-size", "512", "--expansion", "2", "--top-k", "1,4", "--random-controls", "2",
    "--exact-top", "3", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory)


def test_a_truncated_weights_file_is_damaged_and_not_complete(run, tmp_path):
    sae = tmp_path / "sae"
    shutil.copytree(run / "sae", sae)
    assert ckpt.weights_damage(sae / ckpt.WEIGHTS_FILE) is None and ckpt.is_complete(sae)
    whole = (sae / ckpt.WEIGHTS_FILE).read_bytes()
    for damaged in (whole[:100], whole[:4], whole[:-1], whole + b"x"):
        (sae / ckpt.WEIGHTS_FILE).write_bytes(damaged)
        assert ckpt.weights_damage(sae / ckpt.WEIGHTS_FILE) is not None
        assert not ckpt.is_complete(sae)


def test_run_refuses_a_damaged_sae_then_force_trains_it_again(run, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(run.parent, runs)
    copy = runs / run.name
    weights = copy / "sae" / ckpt.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    argv = ["run", "--model", f"hf:{run.parent.parent / 'tiny'}", *RUN_ARGS, "--out", str(runs)]
    before = snapshot(copy)
    one_line_error(capsys, argv, str(weights), "--force")
    before.pop("pipeline.json")  # (run's record of its stages may change)
    assert {k: v for k, v in snapshot(copy).items() if k != "pipeline.json"} == before
    try:
        main([*argv, "--force"])
    except SystemExit as exc:
        assert not exc.code
    [aside] = copy.glob("sae.superseded-*")
    assert (aside / ckpt.WEIGHTS_FILE).stat().st_size == 100
    assert ckpt.is_complete(copy / "sae")
