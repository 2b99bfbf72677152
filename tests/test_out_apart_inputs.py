"""collect, train and ablate refuse an --out that is, holds or lies in a folder they read (--force
would move their own input aside), and collect --force moves another kind of scircuits folder aside
cleanly (its lock file with it) before writing the store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from scircuits.cli import main
from scircuits.platform.common import artifacts
from tests.dashboard_run import tiny_run
from tests.test_write_path import one_line_error, snapshot


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory)


def model_of(run: Path) -> Path:
    return run.parent.parent / "tiny"


def call(argv: list[str]) -> None:
    try:
        main(argv)
    except SystemExit as exc:
        assert not exc.code, exc


def test_collect_force_into_an_sae_folder_moves_it_aside_and_writes_the_store(run, tmp_path):
    copy = tmp_path / "r"
    shutil.copytree(run, copy)
    before = snapshot(copy / "sae")
    argv = ["collect", "--model", f"hf:{model_of(run)}", "--layer", "2", "--limit", "3", "--no-progress"]
    call([*argv, "--out", str(copy / "sae"), "--force"])
    [aside] = copy.glob("sae.superseded-*")
    assert snapshot(aside) == before
    assert (copy / "sae" / "zarr.json").is_file()
    assert not (copy / "sae" / artifacts.LOCK_FILE).exists()
    call([*argv, "--out", str(copy / "sae")])  # a rerun finds its own complete store


@pytest.mark.parametrize(
    "case", ["train store", "train run", "ablate sae", "ablate run", "collect model", "collect inside model"]
)
@pytest.mark.parametrize("force", [False, True])
def test_an_out_that_is_or_holds_an_input_is_refused_before_any_work(run, tmp_path, capsys, case, force):
    copy = tmp_path / "r"
    shutil.copytree(run, copy)
    model = tmp_path / "tiny"
    shutil.copytree(model_of(run), model)
    model_args = ["--model", f"hf:{model}", "--layer", "2", "--limit", "4", "--no-progress"]
    argv = {
        "train store": [
            "train",
            "--store",
            str(copy / "activations.zarr"),
            "--out",
            str(copy / "activations.zarr"),
        ],
        "train run": ["train", "--store", str(copy / "activations.zarr"), "--out", str(copy)],
        "ablate sae": ["ablate", *model_args, "--sae", str(copy / "sae"), "--out", str(copy / "sae")],
        "ablate run": ["ablate", *model_args, "--sae", str(copy / "sae"), "--out", str(copy)],
        "collect model": ["collect", *model_args, "--out", str(model)],
        "collect inside model": ["collect", *model_args, "--out", str(model / "acts.zarr")],
    }[case]
    before, model_before = snapshot(tmp_path), snapshot(model)
    one_line_error(capsys, [*argv, *(["--force"] if force else [])], "which this command reads")
    assert snapshot(tmp_path) == before and snapshot(model) == model_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r", "tiny"]
    assert not list(copy.glob("*.superseded-*"))
