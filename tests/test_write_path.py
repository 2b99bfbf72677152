"""One write path for every artifact: dashboard, compare and synth train refuse (or with --force move
aside) what scircuits did not write, never delete it; an --out that is, or holds, an input is refused;
a command writing inside a run is refused while `run` holds the run; stale temporaries are removed."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from scircuits.cli import main
from scircuits.platform.common import artifacts
from scircuits.platform.common.artifacts import ArtifactError, FolderLock
from tests.dashboard_run import compared_run, tiny_run

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory)


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (but the lock file) with its sha256."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != artifacts.LOCK_FILE
    }


def user_folder(where: Path) -> Path:
    (where / "sub").mkdir(parents=True)
    (where / "thesis.txt").write_text("three years of work\n")
    (where / "sub" / "notes.md").write_text("notes\n")
    return where


def one_line_error(capsys, argv: list[str], *needles: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err  # progress lines of the work before the error may precede it
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert "Traceback" not in err and len(errors) == 1 and err.strip().endswith(errors[0]), err
    for needle in needles:
        assert needle in errors[0], err
    return errors[0]


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from scircuits.platform.common.artifacts import FolderLock
    lock = FolderLock(Path(sys.argv[1]), sys.argv[2], shared=sys.argv[3] == "shared")
    print("held", flush=True)
    time.sleep(120)
    """
)


class Holder:
    """Another process holding a folder's lock (as `scircuits run` holds its run directory)."""

    def __init__(self, folder: Path, what: str = "run", shared: bool = False) -> None:
        env = {**os.environ, "PYTHONPATH": f"{PROJECT_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        argv = [sys.executable, "-c", HOLDER, str(folder), what, "shared" if shared else "exclusive"]
        self.process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "held"

    def __enter__(self) -> Holder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.kill()
        self.process.wait()


# -- dashboard ------------------------------------------------------------------------------------


def test_dashboard_refuses_a_folder_of_user_files_and_force_moves_it_aside(run, tmp_path, capsys):
    folder = user_folder(tmp_path / "site")
    before = snapshot(folder)
    one_line_error(capsys, ["dashboard", str(run), "--out", str(folder)], "did not write", "--force")
    assert snapshot(folder) == before
    main(["dashboard", str(run), "--out", str(folder), "--features", "2", "--force"])
    [aside] = tmp_path.glob("site.superseded-*")
    assert snapshot(aside) == before
    assert (folder / "index.html").is_file() and not (folder / "thesis.txt").exists()


@pytest.mark.parametrize("where", ["run", "parent of run", "dot in run", "empty", "sae", "inside causal"])
def test_dashboard_out_that_is_or_holds_an_input_is_refused(run, tmp_path, capsys, monkeypatch, where):
    before = snapshot(run)
    out = {
        "run": str(run),
        "parent of run": "..",
        "dot in run": ".",
        "empty": "",
        "sae": str(run / "sae"),
        "inside causal": str(run / "causal" / "site"),
    }[where]
    monkeypatch.chdir(run / "sae" if where == "parent of run" else run)
    why = "is empty" if where == "empty" else "which this command reads"
    one_line_error(capsys, ["dashboard", str(run), "--out", out], why)
    assert snapshot(run) == before


def test_a_dashboard_rerun_replaces_its_site_and_removes_stale_temporaries(run, tmp_path):
    site = tmp_path / "site"
    main(["dashboard", str(run), "--out", str(site), "--features", "2"])
    first = snapshot(site)
    pid = dead_pid()
    (tmp_path / f".site.tmp-{pid}").mkdir()  # where a killed build of an earlier version staged
    (site / f".site.tmp-{pid}" / "data").mkdir(parents=True)
    (site / "data" / f".matches.tmp-{pid}").mkdir()
    (tmp_path / f".thesis.tmp-{pid}").write_text("not ours: kept")
    main(["dashboard", str(run), "--out", str(site), "--features", "2"])
    assert not list(tmp_path.glob(".site.tmp-*")) and not list(site.rglob("*.tmp-*"))
    assert (tmp_path / f".thesis.tmp-{pid}").exists()
    assert not list(tmp_path.glob("site.superseded-*"))  # its own site is rewritten, not set aside
    strip = {"manifest.json", artifacts.MARKER_FILE}
    assert {k: v for k, v in snapshot(site).items() if k not in strip} == {
        k: v for k, v in first.items() if k not in strip
    }


def test_commands_writing_inside_a_run_are_refused_while_run_holds_it(run, tmp_path, capsys):
    before = snapshot(run)
    with Holder(run, "run"):
        one_line_error(capsys, ["dashboard", str(run)], "another scircuits process")
        one_line_error(
            capsys,
            ["dashboard", str(run), "--out", str(tmp_path / "site")],  # reads the run it writes
            "another scircuits process",
        )
        assert not (tmp_path / "site").exists()
        argv = ["train", "--store", str(run / "activations.zarr"), "--sae", "topk", "--k", "4"]
        argv += ["--batch-size", "256"]  # trainable on this small store: refused for the lock alone
        one_line_error(capsys, [*argv, "--out", str(run / "sae"), "--no-progress"], "scircuits run")
        with pytest.raises(ArtifactError, match="scircuits run"):
            FolderLock(run / "causal", "causal results")  # ablate --out RUN/causal
    assert snapshot(run) == before
    # a command reading or writing inside the run: `scircuits run` on it waits its turn
    with Holder(run, "run", shared=True), pytest.raises(ArtifactError, match="another scircuits process"):
        FolderLock(run, "run")


def test_run_writes_its_own_stages_under_its_lock(run):
    with FolderLock(run, "run"), FolderLock(run / "causal", "causal results"):
        pass  # the same process: `run` calls train and ablate inside its own lock


# -- compare --------------------------------------------------------------------------------------


def test_compare_refuses_a_folder_of_user_files_and_force_moves_it_aside(tmp_path_factory, tmp_path, capsys):
    run, copy, _compare, _perm = compared_run(tmp_path_factory)
    folder = user_folder(tmp_path / "cmp")
    (folder / "report.md").write_text("my report\n")
    (folder / "results.json").write_text('{"mine": true}\n')
    before = snapshot(folder)
    argv = ["compare", str(run), str(copy), "--out", str(folder), "--no-train-twins", "--source", "store"]
    argv += ["--max-tokens", "2000", "--permutations", "9", "--no-progress"]
    one_line_error(capsys, argv, "did not write", "--force")
    assert snapshot(folder) == before
    main([*argv, "--force"])
    [aside] = tmp_path.glob("cmp.superseded-*")
    assert (aside / "report.md").read_text() == "my report\n" and (aside / "thesis.txt").is_file()
    assert json.loads((folder / "results.json").read_text())["format"] == "scircuits.compare"


@pytest.mark.parametrize(
    "where", ["a run", "the runs' parent", "empty", "a run's sae", "inside a run's dashboard"]
)
def test_compare_out_that_is_or_holds_a_run_is_refused(tmp_path_factory, capsys, where):
    run, copy, _compare, _perm = compared_run(tmp_path_factory)
    before = snapshot(run)
    out = {
        "a run": str(run),
        "the runs' parent": str(run.parent),
        "empty": "",
        "a run's sae": str(run / "sae"),
        "inside a run's dashboard": str(run / "dashboard" / "features"),
    }
    why = "is empty" if where == "empty" else "which this command reads"
    one_line_error(capsys, ["compare", str(run), str(copy), "--out", out[where]], why)
    assert snapshot(run) == before


# -- synth train ----------------------------------------------------------------------------------

SYNTH = ["synth", "train", "--task", "logic", "--size", "3", "--layers", "1", "--d-model", "32"]
SYNTH += [
    "--steps",
    "3",
    "--batch-size",
    "16",
    "--eval-every",
    "3",
    "--eval-examples",
    "20",
    "--max-attempts",
    "1",
]


def test_synth_train_refuses_user_files_and_force_or_overwrite_moves_them_aside(tmp_path, capsys):
    folder = user_folder(tmp_path / "model")
    before = snapshot(folder)
    one_line_error(capsys, [*SYNTH, "--out", str(folder)], "did not write", "--force")
    assert snapshot(folder) == before
    main([*SYNTH, "--out", str(folder), "--overwrite"])  # the deprecated flag moves aside too
    [aside] = tmp_path.glob("model.superseded-*")
    assert (aside / "thesis.txt").read_text() == "three years of work\n"
    assert (folder / "synth.json").is_file() and (folder / "model.safetensors").is_file()


def test_synth_train_keeps_the_same_model_and_moves_aside_one_of_other_settings(tmp_path, capsys):
    folder = tmp_path / "model"
    main([*SYNTH, "--out", str(folder)])
    weights = (folder / "model.safetensors").read_bytes()
    main([*SYNTH, "--out", str(folder)])
    assert "already holds this model" in capsys.readouterr().err
    assert not list(tmp_path.glob("model.superseded-*"))
    main([*SYNTH, "--seed", "1", "--out", str(folder)])
    [aside] = tmp_path.glob("model.superseded-*")
    assert (aside / "model.safetensors").read_bytes() == weights
    assert json.loads((folder / "synth.json").read_text())["seed"] == 1


def test_a_second_synth_train_on_one_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "model"
    with Holder(folder, "synth model"):
        one_line_error(capsys, [*SYNTH, "--out", str(folder)], "another scircuits process")
    assert not (folder / "synth.json").exists()


def test_synth_train_removes_stale_temporaries_of_dead_processes(tmp_path):
    folder = tmp_path / "model"
    pid = dead_pid()
    (tmp_path / f"model.tmp-{pid}").mkdir()  # where a killed earlier version staged
    (folder / f".synth.tmp-{pid}").mkdir(parents=True)
    (tmp_path / f"other.tmp-{pid}").mkdir()  # not ours: kept
    main([*SYNTH, "--out", str(folder)])
    assert not (tmp_path / f"model.tmp-{pid}").exists() and not list(folder.glob(".synth.tmp-*"))
    assert (tmp_path / f"other.tmp-{pid}").exists()


def test_a_full_disk_during_synth_train_is_one_line_and_loses_nothing(tmp_path, capsys, monkeypatch):
    from transformers import PreTrainedModel

    folder = tmp_path / "model"
    main([*SYNTH, "--out", str(folder)])
    before = snapshot(folder)

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "model.safetensors")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    one_line_error(capsys, [*SYNTH, "--seed", "1", "--out", str(folder)], "no space left")
    [aside] = tmp_path.glob("model.superseded-*")  # the earlier model, whole
    assert {k: v for k, v in snapshot(aside).items() if k != artifacts.MARKER_FILE} == {
        k: v for k, v in before.items() if k != artifacts.MARKER_FILE
    }
    assert not list(folder.rglob("*.tmp-*")) and not (folder / "synth.json").exists()
    monkeypatch.undo()
    main([*SYNTH, "--seed", "1", "--out", str(folder)])  # the same command once there is space
    assert json.loads((folder / "synth.json").read_text())["seed"] == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_synth_train_on_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    one_line_error(capsys, [*SYNTH, "--device", "cuda", "--out", str(tmp_path / "m")], "no CUDA GPU")
    assert not (tmp_path / "m").exists()


def test_an_empty_out_is_refused_by_synth_train(capsys):
    one_line_error(capsys, [*SYNTH, "--out", ""], "--out is empty")


def test_the_site_folder_is_locked_while_a_dashboard_writes_it(run, tmp_path, capsys):
    site = tmp_path / "site"
    with Holder(site, "dashboard"):
        one_line_error(capsys, ["dashboard", str(run), "--out", str(site)], "another scircuits process")
    shutil.rmtree(site)


def test_a_folder_moved_aside_stays_locked_by_its_writer(tmp_path):
    folder = user_folder(tmp_path / "out")
    with FolderLock(folder, "SAE checkpoint"):
        artifacts.claim(folder, "sae", "abc", force=True)  # moves the user's files aside
        with pytest.raises(ArtifactError, match="another scircuits process"):
            FolderLock(folder, "SAE checkpoint")
    [aside] = tmp_path.glob("out.superseded-*")
    assert (aside / "thesis.txt").is_file()


def test_a_reader_locks_a_run_on_a_read_only_file_system(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / artifacts.LOCK_FILE).touch()
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & (os.O_RDWR | os.O_WRONLY | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(artifacts.os, "open", read_only)
    lock = artifacts.read_lock(folder, "run")  # a dashboard --out elsewhere reads the run
    assert lock is not None
    lock.release()
    with pytest.raises(ArtifactError, match="read-only"):
        FolderLock(folder, "run")  # a writer is refused in one line
