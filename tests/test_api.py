"""The Python API (docs/api.md): the notebook in examples/notebooks runs the default study on a tiny
model through it, every cell executed (nbclient); the run it leaves is then read back through the API
and through the CLI's --json, and the API's refusals are the CLI's one-line errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import traceback
from pathlib import Path

import pytest

import scircuits
from scircuits.api.stages import read_checkpoint
from scircuits.cli import main
from scircuits.platform.contract import jsonvalues

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "notebooks" / "study.ipynb"
# the settings of the notebook's run cell, as flags of `scircuits run`
RUN_FLAGS = [
    "--layer", "2", "--limit", "16", "--collect-limit", "48", "--train-tokens", "6000",
    "--train-batch-size", "512", "--top-k", "1,4", "--random-controls", "2", "--exact-top", "3",
    "--no-progress",
]  # fmt: skip


def notebook_tools():
    """nbclient and nbformat (the dev extra); under CI their absence fails instead of skipping."""
    try:
        import nbclient
        import nbformat
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("nbclient/nbformat are missing: install the dev extra (scripts/setup does)")
        pytest.skip("nbclient/nbformat not installed (pip install -e '.[dev]')")
    return nbclient, nbformat


@pytest.fixture(scope="module")
def notebook_run(tmp_path_factory):
    """Execute every cell of the notebook (fails on the first failing cell); the folder it wrote."""
    nbclient, nbformat = notebook_tools()
    out = tmp_path_factory.mktemp("notebook")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # the kernel gets the notebook's folder, and Jupyter's own plot backend (not a headless one set here)
    before = {name: os.environ.get(name) for name in ("SCIRCUITS_NOTEBOOK_OUT", "MPLBACKEND")}
    os.environ["SCIRCUITS_NOTEBOOK_OUT"] = str(out)
    os.environ.pop("MPLBACKEND", None)
    try:
        client = nbclient.NotebookClient(
            notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(out)}}
        )
        client.execute()
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    runs = list((out / "runs").iterdir())
    assert len(runs) == 1, runs
    return out, runs[0], notebook


def outputs_of(notebook) -> list[dict]:
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


def test_the_notebook_runs_every_cell_and_shows_typed_results(notebook_run):
    _, run_dir, notebook = notebook_run
    outputs = outputs_of(notebook)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("RunResult" in h for h in html) and any("feature " in h for h in html)
    assert any("image/png" in o.get("data", {}) for o in outputs), "the plot is drawn"
    printed = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "invalid run config" in printed and "--random-controls" in printed  # the refusal, one line
    assert (run_dir / "dashboard" / "index.html").is_file()


def test_load_run_reads_the_run_into_typed_results(notebook_run):
    _, run_dir, _ = notebook_run
    run = scircuits.load_run(run_dir)
    assert isinstance(run, scircuits.RunResult) and isinstance(run.study, scircuits.AblateResult)
    assert isinstance(run.study, scircuits.StudyResults)  # results.json's schema
    assert run.study.n_examples == 16 and [s["k"] for s in run.study.sweeps] == [1, 4]
    on_disk = json.loads((run_dir / "causal" / "results.json").read_text())
    assert on_disk["config_hash"] == run.study.config_hash and on_disk["analyses"] == run.study.analyses
    assert run.train is not None and run.train.d_sae == run.study.d_sae and run.train.log()
    assert run.collect is not None and run.collect.n_examples == 48 and run.collect.complete
    assert {"collect", "train", "ablate", "report"} <= set(run.stage_seconds)
    assert run.report is not None and Path(run.report).is_file()
    table = run.to_pandas("features")
    assert list(table["id"]) == [f["id"] for f in run.study.features]
    feature = run.feature(int(table["id"][0]))
    assert feature.rank == 1 and feature.contexts() and feature.page and Path(feature.page).is_file()
    assert "AblateResult(" in repr(run) and "<table>" in run._repr_html_()
    assert len(run.train.to_pandas()) == len(run.train.log())
    with pytest.raises(scircuits.ConfigError, match="no table 'nope'; its tables: sweeps"):
        run.study.table("nope")
    study = scircuits.load_study(run_dir)
    assert study.model_dump() == run.study.model_dump()


def test_run_json_prints_the_run_result(notebook_run, capsys):
    """`scircuits run --json` with the notebook's settings: every stage is up to date, and stdout is
    the RunResult that load_run reads, as JSON."""
    out, run_dir, _ = notebook_run
    main(["run", "--model", f"hf:{out / 'tiny-model'}", *RUN_FLAGS, "--out", str(out / "runs"), "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["path"] == str(run_dir)
    assert printed == json.loads(jsonvalues.dumps(scircuits.load_run(run_dir).model_dump(mode="python")))


def test_dashboard_json_prints_the_dashboard_result(notebook_run, capsys):
    _, run_dir, _ = notebook_run
    main(["dashboard", str(run_dir), "--features", "3", "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["index"] == str(run_dir / "dashboard" / "index.html") and printed["n_pages"] == 3


def test_collect_and_train_json_print_their_results(notebook_run, tmp_path, capsys):
    """`collect --json` and `train --json` (one SAE, and two) print the results the API returns."""
    out, _, _ = notebook_run
    store = tmp_path / "acts.zarr"
    model = ["--model", f"hf:{out / 'tiny-model'}", "--layer", "2", "--no-progress"]
    main(["collect", *model, "--limit", "32", "--out", str(store), "--json"])
    collected = json.loads(capsys.readouterr().out)
    assert collected["path"] == str(store) and collected["new_examples"] == collected["n_examples"] == 32
    train = ["train", "--store", str(store), "--tokens", "2000", "--batch-size", "256", "--no-progress"]
    main([*train, "--out", str(tmp_path / "sae"), "--json"])
    trained = json.loads(capsys.readouterr().out)
    assert trained == json.loads(jsonvalues.dumps(read_checkpoint(tmp_path / "sae").model_dump()))
    assert trained["d_in"] == 64 and trained["tokens"] >= 2000 and "fvu" in trained["metrics"]
    main([*train, "--sae", "topk,relu", "--out", str(tmp_path / "many"), "--json"])
    both = json.loads(capsys.readouterr().out)
    assert [r["variant"] for r in both] == ["topk", "relu"]


def test_quiet_keeps_stderr_to_warnings_and_verbose_keeps_the_messages(notebook_run, capsys):
    """The platform's messages go through logging: `-q` drops them, the default and `-v` keep them."""
    _, run_dir, _ = notebook_run
    main(["-q", "dashboard", str(run_dir), "--features", "2"])
    quiet = capsys.readouterr()
    assert quiet.err == "" and quiet.out.startswith("dashboard: ")
    main(["dashboard", str(run_dir), "--features", "2"])
    assert "[dashboard] scanning " in capsys.readouterr().err
    main(["-v", "dashboard", str(run_dir), "--features", "2"])
    assert "[dashboard] scanning " in capsys.readouterr().err
    out, _, _ = notebook_run
    main(["-v", "run", "--model", f"hf:{out / 'tiny-model'}", *RUN_FLAGS, "--out", str(out / "runs")])
    verbose = capsys.readouterr().err
    assert "[run] collect: key " in verbose and "; config hash " in verbose  # the debug messages
    main(["run", "--model", f"hf:{out / 'tiny-model'}", *RUN_FLAGS, "--out", str(out / "runs")])
    assert "[run] collect: key " not in capsys.readouterr().err
    main(["-v", "dashboard", str(run_dir), "--features", "2"])
    assert "SCIRCUITS_LOG_LEVEL" in os.environ  # passed on to spawned ranks
    main(["dashboard", str(run_dir), "--features", "2"])
    assert "SCIRCUITS_LOG_LEVEL" not in os.environ
    capsys.readouterr()


@pytest.mark.parametrize("command", ["collect", "train", "ablate", "run", "circuit", "compare", "dashboard"])
def test_every_stage_command_has_json(command, capsys):
    try:
        main([command, "--help"])
    except SystemExit as exc:
        assert exc.code == 0
    assert "--json" in capsys.readouterr().out


def test_each_run_in_the_docs_examples_has_its_own_out():
    """docs/api.md's examples run in one folder, in order: a second study in one run folder would move
    the first one's stages aside, so every scircuits.run there (but the refused one) names its own out."""
    calls = re.findall(r"scircuits\.run\((.*)\)", (ROOT / "docs" / "api.md").read_text())
    outs = [re.search(r'out="([^"]+)"', c) for c in calls if "model=model" in c and "=-1" not in c]
    assert len(outs) >= 3 and all(outs), calls
    assert len({o.group(1) for o in outs if o}) == len(outs)


# ----------------------------------------------------------------------------- bad input


def cli_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: "), err
    return err[0][len("Error: ") :]


def platform_frames(exc: BaseException) -> list[str]:
    return [f.filename for f in traceback.extract_tb(exc.__traceback__) if "scircuits/platform" in f.filename]


@pytest.mark.parametrize(
    ("argv", "call"),
    [
        (["ablate", "--random-controls", "-1"], lambda: scircuits.ablate(random_controls=-1)),
        (["run", "--train-lr", "0"], lambda: scircuits.run(train_lr=0.0)),
        (["collect", "--limit", "0"], lambda: scircuits.collect(limit=0)),
        (["train", "--expansion", "999", "--store", "x"], lambda: scircuits.train(expansion=999, store="x")),
        (["run", "--model", "no-such-model"], lambda: scircuits.run(model="no-such-model")),
        (["dashboard", "/no/such/run"], lambda: scircuits.dashboard("/no/such/run")),
    ],
)
def test_the_api_raises_the_cli_error_in_one_line_without_platform_frames(argv, call, capsys):
    message = cli_error(argv, capsys)
    with pytest.raises(scircuits.ScircuitsError) as raised:
        call()
    assert str(raised.value) == message
    assert "\n" not in message
    assert not platform_frames(raised.value), "the traceback is cut at the API call"
    assert raised.value._render_traceback_() == [f"{type(raised.value).__name__}: {message}"]


def test_the_api_refuses_what_the_cli_cannot_be_given(tmp_path):
    with pytest.raises(scircuits.ConfigError, match="give a RunConfig"):
        scircuits.run(scircuits.AblateConfig())
    with pytest.raises(scircuits.ConfigError, match="at least two run directories"):
        scircuits.compare([tmp_path])
    with pytest.raises(scircuits.ConfigError, match="not a folder: give a run directory"):
        scircuits.load_run(tmp_path / "missing")
    with pytest.raises(scircuits.ConfigError, match=r"has no causal/results\.json"):
        scircuits.load_run(tmp_path)
    (tmp_path / "results.json").write_text('{"format": "other"}')
    with pytest.raises(scircuits.ConfigError, match="not a scircuits causal results file"):
        scircuits.load_study(tmp_path)
    with pytest.raises(scircuits.ConfigError, match="not a scircuits comparison"):
        scircuits.load_comparison(tmp_path)
    with pytest.raises(scircuits.ConfigError, match=r"^--limit -1: Input should be greater than 0$"):
        scircuits.CompareOptions(limit=-1)
    with pytest.raises(scircuits.ConfigError, match=r"compare has no option 'limt'; did you mean 'limit'\?"):
        scircuits.CompareOptions(limt=3)
    with pytest.raises(scircuits.ConfigError, match="dashboard: force must be True or False, not the str"):
        scircuits.dashboard(tmp_path, force="yes")
    with pytest.raises(scircuits.ConfigError, match="compare: force must be True or False"):
        scircuits.compare([tmp_path, tmp_path / "b"], force="no")


def test_a_config_object_and_keywords_combine(tmp_path):
    """The config the CLI builds and keyword settings over it: the keywords win, validated alike."""
    from scircuits.api.stages import stage_config

    base = scircuits.RunConfig(limit=7, out=str(tmp_path))
    merged = stage_config(scircuits.RunConfig, base, {"train_tokens": 5000})
    assert merged.ablate.limit == 7 and merged.train.tokens == 5000 and merged.out == str(tmp_path)
    with pytest.raises(scircuits.ConfigError, match="--train-tokens"):
        stage_config(scircuits.RunConfig, base, {"train_tokens": -1})


def test_a_section_keyword_keeps_the_sections_other_settings(tmp_path):
    """``train={...}`` over a config's train section changes the fields it names and keeps the rest."""
    from scircuits.api.stages import stage_config

    base = scircuits.RunConfig(train={"tokens": 5000, "batch_size": 256})
    merged = stage_config(scircuits.RunConfig, base, {"train": {"lr": 0.01}})
    assert (merged.train.tokens, merged.train.batch_size, merged.train.lr) == (5000, 256, 0.01)
    by_epochs = stage_config(scircuits.RunConfig, base, {"train": {"epochs": 2}})
    assert (by_epochs.train.epochs, by_epochs.train.tokens, by_epochs.train.batch_size) == (2, None, 256)


def test_to_pandas_without_pandas_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError
    result = scircuits.TrainResult(path=str(tmp_path), variant="topk", d_in=2, d_sae=4)
    with pytest.raises(
        scircuits.ConfigError, match=r"needs pandas, which is not installed: pip install pandas"
    ):
        result.to_pandas()
    assert result.log() == [] and "TrainResult(path=" in repr(result)


def test_a_newly_installed_analysis_runs_the_study_again_and_redraws_the_report(
    notebook_run, tmp_path, capsys
):
    from scircuits import Analysis, AnalysisResult, hookimpl
    from scircuits.platform.manager.plugin_set import load_plugins

    out, run_dir, _ = notebook_run
    copy = tmp_path / "runs" / run_dir.name
    shutil.copytree(run_dir, copy)

    class Count(AnalysisResult):
        fresh_count: int = 0

    class Fresh(Analysis):
        name = "fresh-count"
        order = 90
        Result = Count

        def run(self, context):
            return Count(fresh_count=7)

    class FreshPlugin:
        @staticmethod
        @hookimpl
        def register_analyses(register):
            register(Fresh())

    plugins = load_plugins(entry_points_too=False)
    plugins.pm.register(FreshPlugin, name="fresh-plugin")
    rerun = scircuits.run(
        plugins=plugins,
        model=f"hf:{out / 'tiny-model'}",
        out=str(tmp_path / "runs"),
        layer=2,
        limit=16,
        collect_limit=48,
        train_tokens=6000,
        train_batch_size=512,
        top_k=[1, 4],
        random_controls=2,
        exact_top=3,
        progress=False,
    )
    said = capsys.readouterr().err
    assert "ablate: the analyses fresh-count were installed since it ran; running it again in place" in said
    assert "collect: up to date" in said and "train: up to date" in said
    assert "report: up to date" not in said  # the report is drawn again from the new study
    assert rerun.path == str(copy)
    assert json.loads((copy / "causal" / "results.json").read_text())["fresh_count"] == 7
