"""The API given what it cannot take: a wrong type, an unknown name, a malformed results.json. Each is
one ConfigError line naming the argument and what to give, raised before any work; never a raw
TypeError or AttributeError from inside the platform."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

import scircuits
from tests.dashboard_run import tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory)


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Anything a call writes by default (compare's ./compare) lands in the test's folder."""
    monkeypatch.chdir(tmp_path)


def study_copy(run: Path, folder: Path, edit=None, seconds=None) -> Path:
    """A run folder holding only ``run``'s causal/results.json (``edit`` applied to its data) and
    pipeline.json (``seconds``: each stage's recorded seconds replaced)."""
    (folder / "causal").mkdir(parents=True)
    data = json.loads((run / "causal" / "results.json").read_text())
    if edit is not None:
        edit(data)
    (folder / "causal" / "results.json").write_text(json.dumps(data))
    state = json.loads((run / "pipeline.json").read_text())
    for stage, value in (seconds or {}).items():
        state["stages"][stage]["seconds"] = value
    (folder / "pipeline.json").write_text(json.dumps(state))
    return folder


# ----------------------------------------------------------------------------- G: analyses by name


def test_result_of_name_gives_the_typed_result_of_an_analysis(run):
    study = scircuits.load_study(run)
    sweeps = study.result_of_name("sweeps")
    assert sweeps is not None and [s.k for s in sweeps.sweeps] == [s["k"] for s in study.sweeps]
    assert study.result_of("sweeps") == sweeps


@pytest.mark.parametrize("call", ["result_of", "result_of_name"])
def test_an_unknown_analysis_name_is_one_line_listing_the_known_ones(run, call):
    study = scircuits.load_study(run)
    with pytest.raises(scircuits.ConfigError, match=r"unknown analysis 'bogus'.*\bsweeps\b") as raised:
        getattr(study, call)("bogus")
    assert "\n" not in str(raised.value)


def test_result_of_something_that_is_no_analysis_says_what_to_give(run):
    with pytest.raises(scircuits.ConfigError, match=r"an Analysis or an analysis's name, not the int 3"):
        scircuits.load_study(run).result_of(3)


# ----------------------------------------------------------------------------- J: compare's options


@pytest.mark.parametrize("options", ["fast", {"limt": 3}, scircuits.RunConfig()])
def test_compare_refuses_options_that_are_not_compare_options(tmp_path, options):
    runs = [tmp_path / "a", tmp_path / "b"]
    with pytest.raises(scircuits.ConfigError, match=r"give a CompareOptions \(or its fields as keywords\)"):
        scircuits.compare(runs, options)
    assert not (tmp_path / "compare").exists()


def test_compare_names_a_mistyped_setting(tmp_path):
    with pytest.raises(scircuits.ConfigError, match=r"compare has no option 'limt'; did you mean 'limit'"):
        scircuits.compare([tmp_path / "a", tmp_path / "b"], limt=3)


# ----------------------------------------------------------------------------- P: argument types


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: scircuits.load_run(None), r"load_run: the run directory must be a path .*not None"),
        (lambda: scircuits.load_study(None), r"load_study: the study must be a path .*not None"),
        (lambda: scircuits.load_comparison(3), r"load_comparison: the compare folder must be a path .*int 3"),
        (lambda: scircuits.dashboard(None), r"dashboard: the run directory must be a path .*not None"),
        (lambda: scircuits.dashboard("r", out=5), r"dashboard: out must be a path .*int 5"),
        (lambda: scircuits.dashboard("r", store=5), r"dashboard: store must be a path .*int 5"),
        (
            lambda: scircuits.dashboard("r", compare=5),
            r"dashboard: compare must be a path .* or a list of them, not the int 5",
        ),
        (lambda: scircuits.dashboard("r", circuit=1.5), r"dashboard: circuit must be a path"),
        (lambda: scircuits.compare(None), r"compare: the run directories must be a list of paths.*None"),
        (lambda: scircuits.compare(["a", None]), r"compare: each run directory must be a path.*None"),
        (lambda: scircuits.train(store="x", plugins="x"), r"plugins must be a PluginSet.*str 'x'"),
        (lambda: scircuits.load_run("r", plugins=3), r"plugins must be a PluginSet"),
    ],
)
def test_a_wrong_argument_type_is_one_config_error_line(call, message):
    with pytest.raises(scircuits.ConfigError, match=message) as raised:
        call()
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("features", ["5", 2.5, True])
def test_dashboard_refuses_a_features_count_that_is_not_a_whole_number_before_any_work(
    run, tmp_path, features
):
    with pytest.raises(scircuits.ConfigError, match=r"dashboard: features must be a whole number"):
        scircuits.dashboard(run, features=features, out=tmp_path / "site")
    assert not (tmp_path / "site").exists()


def test_dashboard_takes_one_compare_folder_as_a_list_of_one(run, tmp_path):
    with pytest.raises(scircuits.ConfigError) as raised:
        scircuits.dashboard(run, compare=str(tmp_path / "cmp2"), out=tmp_path / "site")
    assert "cmp2" in str(raised.value) and "c/results.json" not in str(raised.value)


def test_set_log_level_refuses_an_unknown_level_naming_the_valid_ones():
    logger = logging.getLogger("scircuits")
    before = logger.level
    with pytest.raises(scircuits.ConfigError, match=r"unknown log level 'LOUD'.*DEBUG, INFO, WARNING"):
        scircuits.set_log_level("LOUD")
    with pytest.raises(scircuits.ConfigError, match=r"unknown log level"):
        scircuits.set_log_level(None)
    assert logger.level == before
    scircuits.set_log_level("warning")
    assert logger.level == logging.WARNING
    scircuits.set_log_level(before)


def test_compare_says_a_file_is_not_a_run_folder(run, tmp_path):
    (tmp_path / "afile.txt").write_text("x")
    with pytest.raises(scircuits.ConfigError, match=r"afile\.txt is a file, not a run folder"):
        scircuits.compare([run, tmp_path / "afile.txt"], out=str(tmp_path / "cmp"))
    assert not (tmp_path / "cmp").exists()


# ----------------------------------------------------------------------------- Q: reading a run


def null_features(data):
    data["features"] = None


def text_delta(data):
    data["sweeps"][0]["logprob_delta"] = "x"


@pytest.mark.parametrize(("edit", "field"), [(null_features, "features"), (text_delta, "logprob_delta")])
@pytest.mark.parametrize("load", [scircuits.load_run, scircuits.load_study])
def test_loading_refuses_a_results_json_that_report_refuses(run, tmp_path, edit, field, load):
    folder = study_copy(run, tmp_path / "run", edit)
    with pytest.raises(scircuits.ConfigError, match=rf"does not match its schema: .*{field}") as raised:
        load(folder)
    assert "\n" not in str(raised.value)


def test_loading_a_run_keeps_the_seconds_of_the_stages_that_have_them(run, tmp_path):
    folder = study_copy(run, tmp_path / "run", seconds={"train": None})
    seconds = scircuits.load_run(folder).stage_seconds
    assert "train" not in seconds and seconds["ablate"] > 0 and "collect" in seconds


def test_loading_a_run_whose_pipeline_json_is_unreadable_has_no_seconds(run, tmp_path):
    folder = study_copy(run, tmp_path / "run")
    (folder / "pipeline.json").write_text("[1, 2")
    assert scircuits.load_run(folder).stage_seconds == {}


# ----------------------------------------------------------------------------- review fixes


@pytest.mark.parametrize("first", [{"limit": 16}, 3])
def test_from_sources_given_settings_first_says_they_go_second(first):
    with pytest.raises(scircuits.ConfigError, match=r"first argument is a config file's path") as raised:
        scircuits.RunConfig.from_sources(first)
    assert "from_sources(None, {...})" in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(scircuits.ConfigError, match=r"the settings \(the second argument\) must be a dict"):
        scircuits.RunConfig.from_sources(None, 3)


@pytest.mark.parametrize("feature_id", ["56", 5.0, True])
def test_a_feature_id_that_is_no_int_says_so(run, feature_id):
    with pytest.raises(scircuits.ConfigError, match=r"^feature id must be an int \(got the "):
        scircuits.load_run(run).feature(feature_id)


def test_a_feature_id_may_be_a_numpy_integer(run):
    import numpy as np

    study = scircuits.load_study(run)
    first = study.features[0]["id"]
    assert study.feature(np.int64(first)).id == first


def test_load_study_of_an_interrupted_run_names_its_causal_results(run, tmp_path):
    folder = study_copy(run, tmp_path / "run")
    (folder / "causal" / "results.json").unlink()
    with pytest.raises(scircuits.ConfigError, match=r"run/causal/results\.json does not exist"):
        scircuits.load_study(folder)


def test_a_config_of_another_kind_is_named_with_its_article():
    with pytest.raises(scircuits.ConfigError, match=r"^give a RunConfig .*, not an AblateConfig$"):
        scircuits.run(scircuits.AblateConfig())
    with pytest.raises(scircuits.ConfigError, match=r"^give an AblateConfig .*, not a dict$"):
        scircuits.ablate({"limit": 3})


def train_result_with_log(folder: Path, text: str) -> scircuits.TrainResult:
    (folder / "train_log.jsonl").write_text(text)
    return scircuits.TrainResult(path=str(folder), variant="topk", d_in=2, d_sae=4)


def test_a_train_log_cut_mid_line_reads_without_its_last_line(run, tmp_path):
    text = (run / "sae" / "train_log.jsonl").read_text()
    whole = text.count("\n")
    result = train_result_with_log(tmp_path, text[: int(len(text) * 0.7)])
    assert 0 < len(result.log()) < whole and len(result.to_pandas()) == len(result.log())


def test_a_bad_line_inside_the_train_log_is_a_data_format_error_naming_it(tmp_path):
    result = train_result_with_log(tmp_path, '{"step": 1}\n{"st\n{"step": 2}\n')
    with pytest.raises(scircuits.DataFormatError, match=r"train_log\.jsonl:2: not a JSON object"):
        result.log()
    result = train_result_with_log(tmp_path, '{"step": 1}\n[1]\n')
    with pytest.raises(scircuits.DataFormatError, match=r"train_log\.jsonl:2: not a JSON object"):
        result.to_pandas()


def test_an_unguarded_script_with_several_devices_gets_one_line_naming_the_main_guard(tmp_path):
    import subprocess
    import sys

    from scircuits.store.synthetic import write_synthetic_store

    store = write_synthetic_store(tmp_path / "s.zarr", n_examples=12, d_model=6, chunk_rows=16)
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import scircuits\n"
        "try:\n"
        f"    scircuits.train(store={str(store)!r}, out={str(tmp_path / 'sae')!r}, device='cpu,cpu', "
        "progress=False)\n"
        "except scircuits.ConfigError as exc:\n"
        "    print('CAUGHT', exc)\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("CAUGHT") and 'if __name__ == "__main__":' in lines[0], (
        done.stdout
    )
    assert "bootstrapping" not in done.stderr and "Traceback" not in done.stderr, done.stderr
