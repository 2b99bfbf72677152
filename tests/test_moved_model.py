"""A run whose model weights folder moved after the run (``--model hf:DIR``, then DIR moved):
`scircuits dashboard` and `scircuits compare` say so in one line naming ``--model-path``, and with
``--model-path`` load the weights from their new folder, checked against what the run recorded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from scircuits.cli import main

RUN_FLAGS = [
    "--layer", "2", "--limit", "12", "--collect-limit", "40", "--train-tokens", "4000",
    "--train-batch-size", "512", "--expansion", "2", "--top-k", "1,4", "--random-controls", "2",
    "--exact-top", "3", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
    """(run directory, the model's new folder, a folder of other weights of the same architecture):
    a tiny run of its own (the shared one's model must stay where it is), then its model moved."""
    import torch

    from scircuits.testing import save_tiny_model, tiny_loaded_model

    root = tmp_path_factory.mktemp("moved-model")
    folder = save_tiny_model(tiny_loaded_model("smollm2-135m"), root / "tiny")
    main(["run", "--model", f"hf:{folder}", *RUN_FLAGS, "--out", str(root / "runs")])
    (run,) = list((root / "runs").iterdir())
    new = root / "elsewhere" / "tiny"
    new.parent.mkdir()
    folder.rename(new)
    other = tiny_loaded_model("smollm2-135m")
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(0.01)
    return run, new, save_tiny_model(other, root / "other")


def refused(argv: list[str], capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("Error:")]
    return line


def site_files(site: Path) -> dict[str, bytes]:
    return {str(p.relative_to(site)): p.read_bytes() for p in sorted(site.rglob("*")) if p.is_file()}


def test_dashboard_names_model_path_when_the_recorded_folder_moved(moved, tmp_path, capsys):
    run = shutil.copytree(moved[0], tmp_path / "run")
    before = site_files(run / "dashboard")
    line = refused(["dashboard", str(run), "--no-progress"], capsys)
    assert f"the model's weights folder {moved[1].parent.parent / 'tiny'}" in line
    assert "not found (moved or removed)" in line and "--model-path DIR" in line
    assert site_files(run / "dashboard") == before  # refused before any work: the site is as it was


def test_dashboard_loads_the_model_from_model_path(moved, tmp_path, capsys):
    run = shutil.copytree(moved[0], tmp_path / "run")
    shutil.rmtree(run / "dashboard")
    main(["dashboard", str(run), "--model-path", str(moved[1]), "--no-progress"])
    pages = list((run / "dashboard" / "features").glob("*.html"))
    assert pages and (run / "dashboard" / "index.html").is_file()
    data = (run / "dashboard" / "data" / "features").glob("*.js")
    assert any('"promoted":[{' in p.read_text().replace(" ", "") for p in data)  # the unembedding was read


def test_dashboard_refuses_a_model_path_of_other_weights(moved, tmp_path, capsys):
    run = shutil.copytree(moved[0], tmp_path / "run")
    before = site_files(run / "dashboard")
    line = refused(["dashboard", str(run), "--model-path", str(moved[2]), "--no-progress"], capsys)
    assert f"--model-path {moved[2]} holds other weights (sha256:" in line
    assert f"than the run {run} recorded (sha256:" in line
    assert site_files(run / "dashboard") == before
    line = refused(["dashboard", str(run), "--model-path", str(tmp_path / "none"), "--no-progress"], capsys)
    assert f"--model-path {tmp_path / 'none'} is not a folder" in line


def test_compare_traces_a_moved_model_from_model_path(moved, tmp_path, capsys):
    a = shutil.copytree(moved[0], tmp_path / "a")
    b = shutil.copytree(moved[0], tmp_path / "b")
    argv = ["compare", str(a), str(b), "--source", "model", "--limit", "4", "--no-train-twins"]
    argv += ["--permutations", "19", "--no-progress"]
    line = refused([*argv, "--out", str(tmp_path / "c1")], capsys)
    assert "not found (moved or removed)" in line and "--model-path DIR" in line
    assert not (tmp_path / "c1").exists()
    line = refused([*argv, "--out", str(tmp_path / "c2"), "--model-path", str(moved[2])], capsys)
    assert f"--model-path {moved[2]} holds other weights" in line
    assert not (tmp_path / "c2").exists()
    main([*argv, "--out", str(tmp_path / "c3"), "--model-path", str(moved[1])])
    results = json.loads((tmp_path / "c3" / "results.json").read_text())
    (pair,) = results["pairs"]
    assert pair["comparison"]["n_tokens"] > 0 and pair["contexts"]


def test_compare_from_stores_warns_without_model_path_and_shows_contexts_with_it(moved, tmp_path, capsys):
    a = shutil.copytree(moved[0], tmp_path / "a")
    b = shutil.copytree(moved[0], tmp_path / "b")
    argv = ["compare", str(a), str(b), "--no-train-twins", "--permutations", "19", "--no-progress"]
    capsys.readouterr()
    main([*argv, "--out", str(tmp_path / "c1")])
    err = capsys.readouterr().err
    assert f"warning: compare: no top contexts of {a}" in err and "--model-path DIR" in err
    assert json.loads((tmp_path / "c1" / "results.json").read_text())["pairs"][0]["contexts"] == []
    main([*argv, "--out", str(tmp_path / "c2"), "--model-path", str(moved[1])])
    assert "no top contexts" not in capsys.readouterr().err
    assert json.loads((tmp_path / "c2" / "results.json").read_text())["pairs"][0]["contexts"]
