"""A synthetic task written by a third party against the public API only: it registers through an
entry point, trains with `synth train --task`, and a `scircuits run` on it is scored by the
ground-truth analysis from its declarations (a variable named `value`, no index key)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from scircuits.cli import cli
from scircuits.platform.manager.plugin_set import get_plugins
from tests.plugin_factory import make_plugin_dist

# `a b c =` -> (a + b + c) mod 10: `value` at "=" is composed from all three operands; `first`
# (operand a) sits at a fixed input position. The counterfactual moves c by one: the answer moves.
MODSUM_PLUGIN = """
import random

from scircuits import SynthCounterfactual, SynthProblem, SynthTask, SynthTaskBenchmark, hookimpl


def modsum_problem(digits):
    value = sum(digits) % 10
    prompt = (*map(str, digits), "=")
    cells = [{} for _ in range(1 + len(prompt) + 1)]  # <bos> + prompt + one answer token
    cells[len(prompt)] = {"value": value, "first": digits[0]}  # the "=" predicts the answer
    key = "".join(map(str, digits))
    return SynthProblem("modsum", key, prompt, (str(value),), tuple(cells), {"digits": digits})


class ModSum(SynthTask):
    name = "modsum"
    description = "sum of n digits mod 10"
    size_name, default_size, min_size, max_size = "operands", 3, 2, 5

    def symbols(self):
        return [*map(str, range(10)), "="]

    def draw(self, rng):
        return modsum_problem([rng.randrange(10) for _ in range(self.size)])

    def counterfactuals(self, problem):
        digits = list(problem.facts["digits"])
        digits[-1] = (digits[-1] + 1) % 10
        other = modsum_problem(digits)
        return [SynthCounterfactual.between(problem, other, "value", len(problem.prompt_tokens))]


@hookimpl
def register_synth_tasks(register):
    register(ModSum())


@hookimpl
def register_benchmarks(register):
    register(SynthTaskBenchmark(ModSum()))
"""


@pytest.fixture
def modsum_plugin(tmp_path, monkeypatch):
    make_plugin_dist(tmp_path / "dist", "modsum-plugin", "modsum_plugin_mod", MODSUM_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path / "dist"))
    get_plugins.cache_clear()
    yield get_plugins()
    get_plugins.cache_clear()


def test_the_task_registers_and_its_benchmark_carries_the_declared_ground_truth(modsum_plugin):
    assert modsum_plugin.plugins["modsum-plugin"].error is None
    assert modsum_plugin.plugins["modsum-plugin"].registered["synth_tasks"] == ["modsum"]
    example = next(iter(modsum_plugin.benchmarks.get("synth-modsum").examples(limit=1)))
    meta = example.meta
    assert meta["tokens"][0] == "<bos>" and len(meta["variables"]) == len(meta["tokens"]) == 6
    assert set(meta["variables"][4]) == {"value", "first"} and meta["index_keys"] == []
    [record] = meta["counterfactuals"]
    assert record["name"] == "value" and record["position"] == 4 and record["depends"] is True
    listing = CliRunner().invoke(cli, ["synth", "tasks"])
    assert listing.exit_code == 0
    assert "modsum  (operands 2..5, default 3; plugin modsum-plugin)" in listing.output


def test_an_unknown_task_is_a_one_line_error():
    from scircuits.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "train", "--task", "no-such-task", "--out", "/nonexistent/x"])
    assert exit_info.value.code == 2


def test_a_third_party_task_trains_and_a_run_on_it_is_scored_end_to_end(modsum_plugin, tmp_path):
    model = tmp_path / "modsum"
    args = ["synth", "train", "--task", "modsum", "--layers", "2", "--d-model", "32", "--steps", "300"]
    args += ["--batch-size", "64", "--lr", "3e-3", "--eval-every", "100", "--eval-examples", "150"]
    result = CliRunner().invoke(cli, [*args, "--max-attempts", "1", "--out", str(model)])
    assert result.exit_code == 0, result.output
    info = json.loads((model / "synth.json").read_text())
    assert info["task"] == "modsum" and info["size"] == 3 and info["size_name"] == "operands"

    args = ["run", "--model", f"hf:{model}", "--benchmark", "synth-modsum", "--layer", "0", "--sae", "topk"]
    args += ["--expansion", "4", "--limit", "60", "--collect-limit", "300", "--train-tokens", "6000"]
    args += ["--train-batch-size", "256", "--top-k", "1,5", "--random-controls", "2", "--exact-top", "3"]
    result = CliRunner().invoke(cli, [*args, "--no-progress", "--out", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    run = next((tmp_path / "runs").iterdir())
    truth = json.loads((run / "causal" / "results.json").read_text())["ground_truth"]
    assert truth["task"] == "modsum" and truth["examples"] == 60 and truth["labelled_tokens"] == 60
    labels = {r["label"] for r in truth["feature_recovery"]["probe"]["labels"]}
    assert labels and {label.split("=")[0] for label in labels} <= {"value", "first"}
    assert set(truth["readable_share"]) == {"sae", "probe", "raw", "random-decoder"}
    [edit], [null] = truth["specificity"], truth["null_edit"]
    assert edit["variable"].startswith("value=") and edit["features"]
    assert null["features"] == [] and null["dependent"]["n"] > 0 and null["dependent"]["mean"] == 0.0
    # every answer depends on the last operand: the evaluation examples all fall on one side
    assert edit["dependent"]["n"] == null["dependent"]["n"] and edit["independent"]["n"] == 0
    assert "ground truth" in result.output


def test_a_tasks_mistakes_are_one_line_naming_it_before_training():
    from scircuits import ConfigError, SynthProblem, SynthTask

    def problem(tokens, answer, cells=None):
        n = 1 + len(tokens) + len(answer)
        return SynthProblem("bad", "".join(tokens), tokens, answer, tuple(cells or [{}] * n))

    class Bad(SynthTask):
        name = "bad"
        size_name, default_size, min_size, max_size = "n", 2, 1, 4

        def __init__(self, drawn, size=None):
            super().__init__(size)
            self.drawn = drawn

        def symbols(self):
            return ["a", "b", "="]

        def draw(self, rng):
            return self.drawn(rng)

    cases = [
        (lambda rng: problem(("a", "="), ("Z",)), r"holds 'Z', which symbols\(\) does not list"),
        (
            lambda rng: problem(("a",) * rng.randrange(1, 3) + ("=",), ("b",)),
            "problems of .* tokens; every problem of a size must have one length",
        ),
        (lambda rng: problem(("a", "="), ("b",), [{}] * 2), "2 variable cells for 4 tokens"),
        (lambda rng: {"prompt": "a"}, "draw returned a dict, not a SynthProblem"),
    ]
    for drawn, says in cases:
        with pytest.raises(ConfigError, match=rf"^synth task 'bad' \(n 2\): .*{says}"):
            Bad(drawn).check()
    Bad(lambda rng: problem(("a", "="), ("b",))).check()
