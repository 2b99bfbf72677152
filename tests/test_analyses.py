"""The analysis family: order and checks of registered analyses, a plugin's analysis in results.json,
and results.json read back through its schema (older files migrated or refused)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from pydantic import BaseModel

from scircuits import Analysis, AnalysisResult, hookimpl
from scircuits.platform.causal.registry import analyses_of, study_order
from scircuits.platform.causal.results import SCHEMA_VERSION, read_results
from scircuits.platform.causal.stage import AblateInputs, run_ablate
from scircuits.platform.config import AblateConfig
from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.contract.sae_module import SparseAutoencoder
from scircuits.platform.manager.plugin_set import load_plugins
from scircuits.platform.manager.registry import Registry
from scircuits.testing import tiny_loaded_model


class ReluSAE(SparseAutoencoder):
    variant = "relu-test"

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.pre_activation(x))


class Share(BaseModel):
    correct_clean: float
    passes: int


class CleanShareResult(AnalysisResult):
    clean_share: Share


class CleanShare(Analysis):
    name = "clean-share"
    order = 15  # between baseline (10) and ranking (20)
    after = ("baseline",)
    Result = CleanShareResult

    def passes(self, context):
        return 1

    def run(self, context):
        again = context.run_condition("clean", status="clean again", record="clean_again")
        return CleanShareResult(
            clean_share=Share(correct_clean=again.accuracy, passes=context.study.n_conditions)
        )


class CleanSharePlugin:
    @staticmethod
    @hookimpl
    def register_analyses(register):
        register(CleanShare())


@pytest.fixture(scope="module")
def plugins():
    plugin_set = load_plugins(entry_points_too=False)
    plugin_set.pm.register(CleanSharePlugin, name="test-analysis")
    return plugin_set


def registry_of(*analyses: Analysis) -> Registry[Analysis]:
    registry: Registry[Analysis] = Registry("analyses")
    for a in analyses:
        registry.add(a, owner="test")
    return registry


def test_the_study_runs_analyses_by_order_and_checks_what_they_read(plugins):
    names = [a.name for a in study_order(analyses_of(plugins))]
    assert names.index("clean-share") == names.index("baseline") + 1
    # built-ins at 70, 80 and 85, no other plugin later
    assert names[-3:] == ["features", "ground-truth", "probes"]

    class Early(CleanShare):
        name = "early"
        order = 1

    with pytest.raises(ConfigError, match="reads 'baseline', which is not registered"):
        study_order(registry_of(Early()))

    class Clash(CleanShare):
        name = "clash"
        order = 200
        after = ()

        class Result(AnalysisResult):
            config: int

    with pytest.raises(ConfigError, match=r"'the study itself' and 'clash' \(plugin test\) both write"):
        study_order(registry_of(Clash()))


def test_a_plugin_analysis_lands_in_results_json_and_examples(plugins, tmp_path):
    tiny = tiny_loaded_model("smollm2-135m")
    examples = list(plugins.benchmarks.get("arithmetic").examples("test", 6, 0, {}))
    torch.manual_seed(0)
    sae = ReluSAE(tiny.d_model, 2 * tiny.d_model).eval()
    config = AblateConfig(
        sae="",
        reconstruction_gate=False,
        out=str(tmp_path / "causal"),
        top_k=[1],
        random_controls=1,
        exact_top=2,
        faithfulness_n=[1],
        bootstrap=50,
        progress=False,
        layer=2,
    )
    out = run_ablate(config, plugins, inputs=AblateInputs(tiny, sae, {}, examples, 2))
    raw = json.loads((out / "results.json").read_text())
    assert raw["analyses"][:3] == ["baseline", "clean-share", "ranking"]
    assert raw["clean_share"]["correct_clean"] == raw["baseline"]["accuracy"]
    assert raw["clean_share"]["passes"] == 5  # splice check is not a pass; 4 baseline + this one
    results = read_results(out, analyses_of(plugins))
    typed = results.result_of(CleanShare())
    assert isinstance(typed, CleanShareResult) and typed.clean_share.passes == 5
    rows = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
    assert "clean_again" in next(row for row in rows if row["evaluation"])["scores"]


def write(tmp_path, data) -> str:
    (tmp_path / "results.json").write_text(json.dumps(data))
    return str(tmp_path)


def test_an_older_results_file_is_migrated_and_others_refused(plugins, tmp_path):
    analyses = list(analyses_of(plugins))
    old = {
        "format": "scircuits.causal",
        "format_version": 1,
        "config": {},
        "config_hash": "abc",
        "n_examples": 2,
        "n_tokens": 10,
        "layer": 1,
        "site": "resid",
        "active_features": 3,
        "d_sae": 8,
        "statistics": {
            "bootstrap_replicates": 10,
            "level": 0.95,
            "paired": True,
            "seed": 0,
            "significance": "x",
        },
        "stats_source": "s",
        "edited_positions": "e",
        "n_conditions": 7,
        "provenance": {},
        "rank": {"method": "attribution", "order": "o", "top": [1, 2]},
        "attribution_vs_exact_spearman": 0.5,
    }
    results = read_results(write(tmp_path, old), analyses)
    assert results.schema_version == SCHEMA_VERSION
    assert results.analyses == ["ranking", "exact"]  # the registered analyses whose fields it holds
    ranking = next(a for a in analyses if a.name == "ranking")
    assert results.result_of(ranking).rank.top == [1, 2]

    with pytest.raises(ConfigError, match="newer than this scircuits reads"):
        read_results(write(tmp_path, {**old, "schema_version": SCHEMA_VERSION + 1}), analyses)
    with pytest.raises(ConfigError, match="format_version 7 and no schema_version"):
        read_results(write(tmp_path, {**old, "format_version": 7}), analyses)
    current = {**old, "schema_version": SCHEMA_VERSION}
    with pytest.raises(ConfigError, match="has format_version 7; this scircuits reads 1"):
        read_results(write(tmp_path, {**current, "format_version": 7}), analyses)
    with pytest.raises(ConfigError, match="is not a scircuits causal results file"):
        read_results(write(tmp_path, {"format": "other"}), analyses)
    with pytest.raises(ConfigError, match="does not match the results schema: n_examples"):
        read_results(write(tmp_path, {**old, "n_examples": "many"}), analyses)
    with pytest.raises(ConfigError, match="does not exist"):
        read_results(tmp_path / "nowhere", analyses)


def test_a_failing_plugin_analysis_stops_with_its_name_and_writes_nothing(tmp_path):
    class Broken(Analysis):
        name = "broken"
        order = 5

        def run(self, context):
            raise ValueError("oops")

    class BrokenPlugin:
        @staticmethod
        @hookimpl
        def register_analyses(register):
            register(Broken())

    plugin_set = load_plugins(entry_points_too=False)
    plugin_set.pm.register(BrokenPlugin, name="broken-plugin")
    tiny = tiny_loaded_model("smollm2-135m")
    examples = list(plugin_set.benchmarks.get("arithmetic").examples("test", 2, 0, {}))
    sae = ReluSAE(tiny.d_model, 2 * tiny.d_model).eval()
    config = AblateConfig(
        sae="", out=str(tmp_path / "causal"), progress=False, layer=2, reconstruction_gate=False
    )
    with pytest.raises(
        ConfigError, match="analysis 'broken' of plugin broken-plugin failed: ValueError: oops"
    ):
        run_ablate(config, plugin_set, inputs=AblateInputs(tiny, sae, {}, examples, 2))
    assert not (tmp_path / "causal").exists()

    class TensorResult(AnalysisResult):
        sums: Any = None

    class Unwritable(Analysis):
        name = "unwritable"
        order = 5
        Result = TensorResult

        def run(self, context):
            return TensorResult(sums=torch.ones(2))

    class UnwritablePlugin:
        @staticmethod
        @hookimpl
        def register_analyses(register):
            register(Unwritable())

    plugin_set = load_plugins(entry_points_too=False)
    plugin_set.pm.register(UnwritablePlugin, name="tensor-plugin")
    with pytest.raises(
        ConfigError,
        match=r"analysis 'unwritable' of plugin tensor-plugin: its result field 'sums' cannot be written",
    ):
        run_ablate(config, plugin_set, inputs=AblateInputs(tiny, sae, {}, examples, 2))
    assert not (tmp_path / "causal" / "examples.jsonl").exists()


def test_baseline_splits_accuracy_by_whether_the_answer_is_in_the_prompt():
    import numpy as np

    from scircuits.plugins.analyses.baseline import split_accuracy

    marks = [True, False, True, False, False]
    clean = np.array([True, False, False, True, True])
    spliced = np.array([True, True, True, False, False])
    split = split_accuracy(marks, clean, spliced)
    assert (split.n_in_prompt, split.n_not_in_prompt) == (2, 3)
    assert split.clean_in_prompt == 0.5 and split.clean_not_in_prompt == pytest.approx(2 / 3)
    assert split.splice_in_prompt == 1.0 and split.splice_not_in_prompt == pytest.approx(1 / 3)
    everything_in = split_accuracy([True] * 5, clean, spliced)
    assert everything_in.clean_not_in_prompt is None and everything_in.clean_in_prompt == 0.6
    assert (
        split_accuracy([True, None, False, False, False], clean, spliced) is None
    )  # not every example marked


def test_a_plugin_analysis_named_like_a_builtin_is_refused_alone():
    class Impostor(Analysis):
        name = "ranking"
        order = 5

        def run(self, context):
            return None

    class Extra(Analysis):
        name = "extra-one"
        order = 5

        def run(self, context):
            return None

    class ImpostorPlugin:
        @staticmethod
        @hookimpl
        def register_analyses(register):
            register(Impostor())
            register(Extra())

    plugin_set = load_plugins(entry_points_too=False)
    plugin_set.pm.register(ImpostorPlugin, name="impostor")
    registry = analyses_of(plugin_set)
    assert registry.owner("ranking").startswith("builtin:")  # the built-in keeps its name
    assert "extra-one" in registry  # the plugin's other analysis is registered
    errors = plugin_set.plugins["impostor"].errors
    assert len(errors) == 1 and "'ranking'" in errors[0] and "built-in" in errors[0], errors


def test_a_study_of_too_few_examples_says_what_its_numbers_are_worth(tmp_path, capsys):
    plugin_set = load_plugins(entry_points_too=False)
    tiny = tiny_loaded_model("smollm2-135m")
    examples = list(plugin_set.benchmarks.get("arithmetic").read_examples("test", 1, 0, {}))
    sae = ReluSAE(tiny.d_model, 2 * tiny.d_model).eval()
    config = AblateConfig(
        sae="",
        out=str(tmp_path / "causal"),
        progress=False,
        layer=2,
        reconstruction_gate=False,
        top_k=[1],
        random_controls=1,
        exact_top=1,
        faithfulness_n=[1],
    )
    run_ablate(config, plugin_set, inputs=AblateInputs(tiny, sae, {}, examples, 2))
    err = capsys.readouterr().err
    assert "1 example(s) cannot be split: features are ranked and measured on the same examples" in err
    assert "effects are measured on 1 example(s)" in err
