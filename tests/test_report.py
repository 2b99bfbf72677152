"""The report: markdown + self-contained HTML of one run, and the comparison table of several."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from scircuits import AdjustedContrast
from scircuits.cli import main
from scircuits.platform.causal.registry import analyses_of
from scircuits.platform.causal.results import StatisticsInfo, StudyResults, write_study
from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.manager.plugin_set import get_plugins
from scircuits.platform.report.build import write_report as write_report_with
from scircuits.plugins.analyses.baseline import (
    BaselineResult,
    CleanScores,
    Reconstruction,
    Scores,
    SpliceCheck,
)
from scircuits.plugins.analyses.exact import ExactResult
from scircuits.plugins.analyses.faithfulness import (
    FaithfulnessPoint,
    FaithfulnessReference,
    FaithfulnessResult,
)
from scircuits.plugins.analyses.features import (
    Feature,
    FeaturesResult,
    LogitEffectsResult,
    TokenContext,
    TokenLogit,
)
from scircuits.plugins.analyses.ranking import RankInfo, RankingResult
from scircuits.plugins.analyses.sweeps import ControlEffect, ControlSets, Sweep, SweepsResult
from tests.read_only import make_read_only


def write_report(run_dirs, out=None):
    return write_report_with(run_dirs, get_plugins(), out)


def fake_run(root: Path, model: str, fvu: float, recovered: float) -> Path:
    """A run directory whose results.json is built through the results schema and the built-in
    analyses' result types."""
    run = root / f"{model}__arithmetic__resid3"
    (run / "sae").mkdir(parents=True)
    analyses = {a.name: a for a in analyses_of(get_plugins())}

    def sweep(k: int, d: float) -> Sweep:
        return Sweep(
            k=k,
            ablation="zero",
            features=list(range(k)),
            accuracy_delta=d / 10,
            accuracy_ci=[d / 10 - 0.05, d / 10 + 0.05],
            logprob_delta=d,
            logprob_ci=[d - 0.1, d + 0.1],
            significant_logprob=d < -0.3,
            significant_accuracy=False,
            control=ControlEffect(
                accuracy_delta=0.0,
                accuracy_ci=[-0.02, 0.02],
                logprob_delta=-0.01,
                logprob_ci=[-0.05, 0.03],
                draws=[],
            ),
            control_sets=ControlSets(
                features=[list(range(100, 100 + k))],
                bands=[[2.0] * k],
                band=2.0,
                widened=0,
                min_overlap=0.5,
                median_frequency_ratio=0.62 if k == 1 else 1.0,
                median_size_ratio=1.0,
                off_medians=["frequency 0.62"] if k == 1 else [],
                log_frequency_ratio=[-0.48],
                log_size_ratio=[0.0],
            ),
            adjusted_logprob=AdjustedContrast(
                method="ols",
                raw=d + 0.01,
                adjusted=d + 0.2,
                adjusted_control=-0.21,
                ci=[d + 0.05, d + 0.35],
                level=0.95,
                coefficients=[-0.21, 0.4, 0.1],
                rank=3,
                n_sets=20,
                replicates=1000,
                log_frequency_range=[-0.69, -0.1],
                log_size_range=[-0.2, 0.3],
                extrapolated=["frequency"],
                note="ratio 1 lies outside the control sets' ratios (frequency): the prediction extrapolates",
            ),
        )

    def feature(i: int) -> Feature:
        return Feature(
            id=i,
            rank=i + 1,
            attribution=-0.1 * (i + 1),
            mean_activation=0.5,
            frequency=0.2,
            exact_logprob_delta=-0.12 * (i + 1),
            exact_logprob_ci=[-0.2 * (i + 1), -0.05],
            exact_accuracy_delta=-0.01,
            exact_accuracy_ci=[-0.03, 0.0],
            top_tokens=[
                TokenContext(
                    token="=",
                    activation=2.0,
                    example=0,
                    position=3,
                    focus=2,
                    context=[("1", 0.0), ("+", 0.5), ("=", 2.0), ("<b>", 0.1)],
                )
            ],
            promoted=[TokenLogit(token=" 7", logit=1.0)],
            suppressed=[TokenLogit(token="\n", logit=-1.0)],
        )

    results = [
        BaselineResult(
            splice=SpliceCheck(
                max_abs_logit_diff=2e-7,
                fast_path_max_abs_diff=1e-7,
                examples_checked=32,
                tolerance=1e-3,
                method="nnsight",
            ),
            baseline=CleanScores(accuracy=0.4, logprob=-2.0, ce_loss=2.5),
            splice_scores=Scores(accuracy=0.4, logprob=-2.0),
            reconstruction=Reconstruction(
                accuracy=0.3,
                logprob=-2.4,
                ce_loss=2.9,
                ce_loss_clean=2.5,
                ce_loss_zero_site=8.0,
                ce_loss_recovered=recovered,
                zero_site_accuracy=0.0,
                zero_site_logprob=-9.0,
            ),
            sae_metrics_eval={"fvu": 0.5, "l0": 30.0, "dead_fraction": 0.1},
        ),
        RankingResult(rank=RankInfo(method="attribution", order="most negative first", top=[0, 1, 2])),
        SweepsResult(sweeps=[sweep(1, -0.1), sweep(5, -0.6)]),
        ExactResult(attribution_vs_exact_spearman=0.8),
        FaithfulnessResult(
            faithfulness=[
                FaithfulnessPoint(n=1, value=0.2, logprob=-2.3, accuracy=0.3),
                FaithfulnessPoint(n=10, value=0.9, logprob=-2.05, accuracy=0.38),
            ],
            faithfulness_reference=FaithfulnessReference(all=-2.0, none=-3.0, metric="mean logprob"),
        ),
        LogitEffectsResult(unembedding="W_dec @ W_U"),
        FeaturesResult(features=[feature(i) for i in range(3)], contexts_source="store"),
    ]
    names = ["baseline", "ranking", "sweeps", "exact", "faithfulness", "logit_effects", "features"]
    study = StudyResults.assemble(
        {
            "config": {},
            "config_hash": "x",
            "n_examples": 40,
            "n_tokens": 1600,
            "layer": 3,
            "site": "resid",
            "active_features": 200,
            "d_sae": 256,
            "statistics": StatisticsInfo(
                bootstrap_replicates=1000, level=0.95, paired=True, seed=0, significance="disjoint"
            ),
            "stats_source": "evaluation tokens",
            "edited_positions": "every position >= 1",
            "n_conditions": 30,
            "provenance": {
                "model": {"name": model, "model_id": f"org/{model}", "revision": "abc123"},
                "benchmark": {"name": "arithmetic", "split": "test"},
                "sae": {"path": str(run / "sae"), "variant": "topk", "d_sae": 256},
                "store": {"source": "traced", "n_examples": 100, "n_tokens": 4000},
            },
        },
        [(analyses[n], r) for n, r in zip(names, results, strict=True)],
    )
    write_study(run / "causal", study, [])
    (run / "sae" / "scircuits.json").write_text(
        json.dumps({"metrics": {"fvu": fvu, "l0": 32.0, "dead_fraction": 0.05}})
    )
    log = [{"step": s, "loss": 1.0 / s, "l0": 32} for s in range(1, 20)] + [
        {"step": 19, "eval": {"fvu": fvu}}
    ]
    (run / "sae" / "train_log.jsonl").write_text("\n".join(json.dumps(r) for r in log) + "\n{cut by a cra")
    return run


def test_one_run_report_has_every_section_and_embeds_its_figures(tmp_path):
    run = fake_run(tmp_path, "smollm2-135m", fvu=0.21, recovered=0.87)
    files = write_report([run])
    md = (run / "report.md").read_text()
    page = (run / "report.html").read_text()
    for text in (
        "Provenance",
        "abc123",
        "SAE quality",
        "0.210",
        "0.870",
        "Ablation sweeps",
        "Feature importance",
        "Faithfulness",
        "Top features",
        "promotes",
        "**Warning:** the matched controls of top 1 are off target: median control / top ratio frequency",
        "adjusted for the ratios (control effect read at ratio 1) top − control Δlogprob +0.100 "
        "[-0.050, +0.250] against -0.090 raw, extrapolated (frequency",
        "Adjusted for the controls' ratios",
        "| 1 | Δlogprob | -0.090 | -0.210 | 0.100 | [-0.050, 0.250] | 0.50–0.90 | 0.82–1.35 | frequency |",
    ):
        assert text in md, text
    assert "top 5 are off target" not in md
    for name in ("training", "ablation_logprob", "ablation_accuracy", "importance", "faithfulness"):
        assert (run / "figures" / f"{name}.png").is_file()
        assert f"figures/{name}.png" in md
    assert page.count("data:image/png;base64,") == 5
    assert not re.search(r'src="(?!data:)', page)  # nothing loaded from outside the file
    assert "rgba(255,80,0,1.00)" in page  # the top token is shaded fully
    assert "&lt;b&gt;" in page  # tokens are escaped
    assert run / "report.html" in files


def test_comparison_of_several_runs_compares_fvu_and_ce_loss_recovered(tmp_path):
    a = fake_run(tmp_path, "gpt2-medium", fvu=0.31, recovered=0.75)
    b = fake_run(tmp_path, "pythia-1.4b", fvu=0.42, recovered=0.66)
    out = tmp_path / "cmp"
    write_report([a, b], out)
    md = (out / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| run | model"))
    assert (
        "FVU" in header and "CE loss recovered" in header and "MSE" not in header and " loss |" not in header
    )
    rows = [
        line
        for line in md.splitlines()
        if line.startswith(f"| {a.name} | gpt2-medium") or line.startswith(f"| {b.name} | pythia-1.4b")
    ]
    assert len(rows) == 2 and "0.310" in rows[0] and "0.750" in rows[0] and "0.420" in rows[1]
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 10


def test_report_command(tmp_path, capsys):
    run = fake_run(tmp_path, "phi-2", fvu=0.3, recovered=0.8)
    main(["report", str(run), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "report.html").is_file()
    assert "report.md" in capsys.readouterr().out


def test_a_directory_without_results_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"no causal/results.json"):
        write_report([tmp_path])


def test_a_run_of_an_analysis_no_plugin_provides_still_reports(tmp_path):
    run = fake_run(tmp_path, "phi-2", fvu=0.3, recovered=0.8)
    path = run / "causal" / "results.json"
    data = json.loads(path.read_text())
    data["analyses"].append("uninstalled")
    data["uninstalled_value"] = 3
    path.write_text(json.dumps(data))
    write_report([run])
    assert (
        "analysis 'uninstalled' ran, but no installed plugin provides it" in (run / "report.md").read_text()
    )


def test_an_older_results_file_reports_the_same(tmp_path):
    run = fake_run(tmp_path, "phi-2", fvu=0.3, recovered=0.8)
    write_report([run])
    current = (run / "report.md").read_text()
    path = run / "causal" / "results.json"
    data = json.loads(path.read_text())
    del data["schema_version"], data["analyses"]  # the format before schema_version
    path.write_text(json.dumps(data))
    write_report([run])
    assert (run / "report.md").read_text() == current


def test_an_older_results_file_without_the_adjusted_contrast_reports(tmp_path):
    run = fake_run(tmp_path, "phi-2", fvu=0.3, recovered=0.8)
    path = run / "causal" / "results.json"
    data = json.loads(path.read_text())
    for sweep in data["sweeps"]:
        del sweep["adjusted_logprob"], sweep["adjusted_accuracy"]
        del sweep["control_sets"]["log_frequency_ratio"], sweep["control_sets"]["log_size_ratio"]
    path.write_text(json.dumps(data))
    write_report([run])
    md = (run / "report.md").read_text()
    assert "**Warning:** the matched controls of top 1 are off target" in md
    assert "Adjusted for the controls' ratios" not in md and "adjusted for the ratios" not in md


def test_a_prompt_holding_html_is_escaped_in_the_page(tmp_path):
    """A prompt's tokens, a promoted token and the benchmark's label holding `<script>` and `&`: shown as
    text in report.html (the page runs no script), kept as written in report.md."""
    hostile = "<script>alert(1)</script> & co"
    run = fake_run(tmp_path, "phi-2", fvu=0.3, recovered=0.8)
    path = run / "causal" / "results.json"
    data = json.loads(path.read_text())
    data["provenance"]["benchmark"]["label"] = hostile
    feature = data["features"][0]
    feature["top_tokens"][0]["context"][1][0] = hostile
    feature["promoted"][0]["token"] = hostile
    path.write_text(json.dumps(data))
    write_report([run])
    page = (run / "report.html").read_text()
    assert "<script" not in page
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co"
    assert page.count(escaped) == 3  # the provenance table, the context, the promoted tokens
    assert hostile in (run / "report.md").read_text()


def report_refused(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("Error")]
    assert exited.value.code == 2 and "Traceback" not in err and len(lines) == 1
    return lines[0]


def test_report_will_not_overwrite_another_runs_report(tmp_path, capsys):
    a = fake_run(tmp_path, "gpt2-medium", fvu=0.31, recovered=0.75)
    b = fake_run(tmp_path, "pythia-1.4b", fvu=0.42, recovered=0.66)
    write_report([b])
    before = {p: p.read_bytes() for p in [b / "report.md", b / "report.html", *(b / "figures").iterdir()]}
    line = report_refused(["report", str(a), "--out", str(b)], capsys)
    assert "is the run directory of another run" in line and "choose another --out" in line
    assert {p: p.read_bytes() for p in before} == before
    write_report([a])  # a run's own report is rewritten as before
    assert (a / "report.md").read_text().startswith("# scircuits: gpt2-medium")


def test_report_never_writes_into_what_a_run_is_made_of(tmp_path, capsys):
    a = fake_run(tmp_path, "gpt2-medium", fvu=0.31, recovered=0.75)
    b = fake_run(tmp_path, "pythia-1.4b", fvu=0.42, recovered=0.66)
    for inside in (a / "causal", a / "sae", a / "causal" / "deeper"):
        line = report_refused(["report", str(a), str(b), "--out", str(inside), "--force"], capsys)
        assert "which this command reads; give a folder outside it" in line, line
    assert (a / "causal" / "results.json").is_file() and not list(a.glob("*.superseded-*"))


def test_report_will_not_overwrite_the_report_of_other_runs(tmp_path, capsys):
    a = fake_run(tmp_path, "gpt2-medium", fvu=0.31, recovered=0.75)
    b = fake_run(tmp_path, "pythia-1.4b", fvu=0.42, recovered=0.66)
    out = tmp_path / "out"
    write_report([a], out)
    write_report([a], out)  # the same report again: rewritten
    line = report_refused(["report", str(b), "--out", str(out)], capsys)
    assert "holds the report of other runs" in line and str(a.resolve()) in line
    assert (out / "report.md").read_text().startswith("# scircuits: gpt2-medium")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "report.md").write_text("my notes")
    line = report_refused(["report", str(a), "--out", str(tmp_path / "mine")], capsys)
    assert "files scircuits did not write (report.md...)" in line and "--force" in line
    assert (tmp_path / "mine" / "report.md").read_text() == "my notes"
    main(["report", str(b), "--out", str(out), "--force"])  # the report of other runs, moved aside
    main(["report", str(a), "--out", str(tmp_path / "mine"), "--force"])  # the user's files, moved aside
    assert (out / "report.md").read_text().startswith("# scircuits: pythia-1.4b")
    [aside] = tmp_path.glob("out.superseded-*")
    assert (aside / "report.md").read_text().startswith("# scircuits: gpt2-medium")
    [mine] = tmp_path.glob("mine.superseded-*")
    assert (mine / "report.md").read_text() == "my notes"
    assert (tmp_path / "mine" / "report.md").read_text().startswith("# scircuits: gpt2-medium")
    line = report_refused(["report", str(a), "--out", str(b), "--force"], capsys)  # never a run directory
    assert "is the run directory of another run" in line


def test_an_unmarked_report_folder_of_an_earlier_version_is_rewritten(tmp_path):
    a = fake_run(tmp_path, "gpt2-medium", fvu=0.31, recovered=0.75)
    out = tmp_path / "out"
    write_report([a], out)
    (out / ".scircuits-artifact.json").unlink()
    write_report([a], out)
    assert json.loads((out / ".scircuits-artifact.json").read_text())["kind"] == "report"


def test_a_run_given_twice_and_a_causal_folder_are_refused(tmp_path, capsys):
    a = fake_run(tmp_path, "gpt2-medium", fvu=0.31, recovered=0.75)
    line = report_refused(
        ["report", str(a), str(tmp_path / "." / a.name), "--out", str(tmp_path / "x")], capsys
    )
    assert "is given twice; report needs different runs" in line
    assert not (tmp_path / "x").exists()
    line = report_refused(["report", str(a / "causal")], capsys)
    assert f"is the causal folder of the run {a}" in line and f"scircuits report {a}" in line
    assert not (a / "causal" / "report.md").exists()


@pytest.mark.parametrize("where", ["run", "out"])
def test_a_read_only_folder_stops_report_in_one_line(tmp_path, capsys, monkeypatch, where):
    a = fake_run(tmp_path, "gpt2-medium", fvu=0.31, recovered=0.75)
    folder = a if where == "run" else tmp_path / "ro"
    folder.mkdir(exist_ok=True)
    make_read_only(monkeypatch, folder)
    argv = ["report", str(a)] + (["--out", str(folder)] if where == "out" else [])
    line = report_refused(argv, capsys)
    assert f"{folder}: cannot write here (Operation not permitted); choose another --out" in line
    assert not (folder / "report.md").exists()


def test_a_plugin_analysis_whose_section_fails_leaves_the_rest_of_the_report(tmp_path, capsys):
    from scircuits import Analysis, AnalysisResult, hookimpl
    from scircuits.platform.manager.plugin_set import load_plugins

    run = fake_run(tmp_path, "phi-2", fvu=0.3, recovered=0.8)
    path = run / "causal" / "results.json"
    data = json.loads(path.read_text())
    data["analyses"].append("drawn-badly")
    data["badly_value"] = 3
    path.write_text(json.dumps(data))

    class Badly(AnalysisResult):
        badly_value: int = 0

    class DrawnBadly(Analysis):
        name = "drawn-badly"
        order = 95
        Result = Badly

        def run(self, context):
            return Badly(badly_value=3)

        def findings(self, doc, result, results):
            raise KeyError("nope")

        def report(self, doc, result, results):
            raise RuntimeError("cannot draw")

    class Plugin:
        @staticmethod
        @hookimpl
        def register_analyses(register):
            register(DrawnBadly())

    plugins = load_plugins(entry_points_too=False)
    plugins.pm.register(Plugin, name="bad-drawing")
    write_report_with([run], plugins)
    text = (run / "report.md").read_text()
    assert "analysis 'drawn-badly' could not draw its section" in text
    assert "## Ablation sweeps" in text and "## Top features" in text  # the other sections are drawn
    err = capsys.readouterr().err
    assert "its report section failed (RuntimeError: cannot draw)" in err
    assert "its findings failed (KeyError: 'nope')" in err


def test_a_report_of_a_run_whose_sae_was_replaced_warns(tmp_path, capsys):
    import hashlib

    run = fake_run(tmp_path, "phi-2", fvu=0.3, recovered=0.8)
    path = run / "causal" / "results.json"
    data = json.loads(path.read_text())
    data["provenance"]["sae"] = {"weights_sha256": hashlib.sha256(b"measured").hexdigest()}
    path.write_text(json.dumps(data))
    (run / "sae" / "sae_weights.safetensors").write_bytes(b"another SAE")
    write_report([run])
    err = capsys.readouterr().err
    assert "sae_weights.safetensors is not the SAE the study in" in err and "rerun the study" in err
    data["provenance"]["sae"]["weights_sha256"] = hashlib.sha256(b"another SAE").hexdigest()
    path.write_text(json.dumps(data))
    write_report([run])
    assert "is not the SAE" not in capsys.readouterr().err


def test_a_comparison_of_runs_of_one_folder_name_tells_them_apart(tmp_path):
    a = fake_run(tmp_path / "runs0", "phi-2", fvu=0.3, recovered=0.8)
    b = fake_run(tmp_path / "runs1", "phi-2", fvu=0.4, recovered=0.7)
    assert a.name == b.name
    out = tmp_path / "cmp"
    write_report([a, b], out)
    text = (out / "report.md").read_text()
    assert f"## runs0/{a.name}" in text and f"## runs1/{b.name}" in text
    assert f"| runs0/{a.name} |" in text and f"| runs1/{b.name} |" in text  # the comparison table
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert any(f.startswith("runs0__") for f in figures) and any(f.startswith("runs1__") for f in figures)


# The first `scircuits report` of a folder, held inside its write (after its lock is taken) until the
# test lets it go: a real process, as the second one is.
HELD_REPORT = r"""
import sys, time
from pathlib import Path
from scircuits.cli import main
from scircuits.platform.report.document import ReportDocument

inside, release = Path(sys.argv[1]), Path(sys.argv[2])
real = ReportDocument.write

def held(self, *args, **kwargs):
    inside.write_text("writing")
    deadline = time.monotonic() + 120
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return real(self, *args, **kwargs)

ReportDocument.write = held
main(["report", *sys.argv[3:]])
"""


@pytest.mark.parametrize("where", ["run", "out"])
def test_a_second_report_of_the_same_folder_is_refused_while_the_first_writes(tmp_path, where):
    import os
    import subprocess
    import sys
    import time

    from tests.cli_helpers import run_cli

    root = Path(__file__).resolve().parents[1]
    run = fake_run(tmp_path, "smollm2-135m", fvu=0.1, recovered=0.9)
    if where == "run":
        args, target, what = [str(run)], run, "run directory"
    else:
        other = fake_run(tmp_path, "phi-2", fvu=0.3, recovered=0.8)
        target = tmp_path / "both"
        args, what = [str(run), str(other), "--out", str(target)], "report"
    inside, release = tmp_path / "inside", tmp_path / "release"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
    }
    first = subprocess.Popen(
        [sys.executable, "-c", HELD_REPORT, str(inside), str(release), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not inside.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert inside.exists(), first.communicate()
        second = run_cli("report", *args, env={"PYTHONPATH": env["PYTHONPATH"]}, timeout=120)
    finally:
        release.write_text("go")
        _out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
    (line,) = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert line == (
        f"Error: {target}: another scircuits process is writing this {what}; wait for it to finish or "
        "write elsewhere"
    )
    # the first report is whole, and the folder is free again: the same command now succeeds
    assert (target / "report.md").read_text().startswith("# scircuits: ")
    assert (target / "report.html").is_file()
    again = run_cli("report", *args, env={"PYTHONPATH": env["PYTHONPATH"]}, timeout=120)
    assert again.returncode == 0, again.stderr
