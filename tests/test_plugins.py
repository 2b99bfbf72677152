"""The plugin manager: built-ins, entry points, broken plugins, allow-list, name collisions."""

from __future__ import annotations

import uuid

import pytest

from scircuits import Benchmark
from scircuits.platform.contract import hookspecs
from scircuits.platform.contract.errors import PluginConflictError, UnknownNameError
from scircuits.platform.manager.plugin_set import BUILTIN_MODULES, load_plugins
from tests.plugin_factory import make_plugin_dist

BENCHMARK_PLUGIN = """
from scircuits import Benchmark, Example, hookimpl

class Tiny(Benchmark):
    name = "{name}"
    description = "a test benchmark"

    def examples(self, split="test", limit=None, seed=0, options=None):
        yield Example(id="t/0", prompt="1 + 1 =", target=" 2")

@hookimpl
def register_benchmarks(register):
    register(Tiny())
"""


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def test_builtins_load_without_entry_points():
    plugins = load_plugins(entry_points_too=False)
    assert [p.module for p in plugins.plugins.values()] == list(BUILTIN_MODULES)
    assert not plugins.failed()
    assert {"zero", "mean", "resample", "clamp"} <= set(plugins.ablations.names())
    info = plugins.plugins["builtin:ablations"]
    assert info.hooks == ["register_ablations"] and info.registered == {
        "ablations": ["zero", "mean", "resample", "clamp"]
    }


def test_entry_point_plugin_is_loaded_with_its_distribution(tmp_path, monkeypatch):
    module = unique("good_plugin")
    make_plugin_dist(
        tmp_path, "good-plugin", module, BENCHMARK_PLUGIN.format(name="tiny-bench"), version="2.3"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = load_plugins()
    info = plugins.plugins["good-plugin"]
    assert info.error is None
    assert (info.distribution, info.version, info.module) == ("good-plugin", "2.3", module)
    assert info.hooks == ["register_benchmarks"]
    assert info.registered == {"benchmarks": ["tiny-bench"]}
    bench = plugins.benchmarks.get("tiny-bench")
    assert isinstance(bench, Benchmark) and next(bench.examples()).target == " 2"
    assert plugins.benchmarks.owner("tiny-bench") == "good-plugin"


def test_plugin_raising_on_import_is_recorded_not_fatal(tmp_path, monkeypatch):
    make_plugin_dist(tmp_path, "broken-plugin", unique("broken"), "raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = load_plugins()
    info = plugins.plugins["broken-plugin"]
    assert info.error == "import failed: RuntimeError: boom at import"
    assert "zero" in plugins.ablations  # everything else still loaded


def test_misspelt_hook_is_reported(tmp_path, monkeypatch):
    source = """
from scircuits import hookimpl

@hookimpl
def register_benchmark(register):
    pass
"""
    make_plugin_dist(tmp_path, "typo-plugin", unique("typo"), source)
    monkeypatch.syspath_prepend(str(tmp_path))
    info = load_plugins().plugins["typo-plugin"]
    assert "'register_benchmark' matches no hook" in info.error
    known = info.error.split("known hooks: ")[1].split(", ")
    assert known == hookspecs.hook_names()  # every hook, the family ones and the others
    assert {"register_benchmarks", "register_analyses", "register_commands"} <= set(known)


def test_hook_with_wrong_arguments_is_reported(tmp_path, monkeypatch):
    source = """
from scircuits import hookimpl

@hookimpl
def register_models(register, extra):
    pass
"""
    make_plugin_dist(tmp_path, "badargs-plugin", unique("badargs"), source)
    monkeypatch.syspath_prepend(str(tmp_path))
    info = load_plugins().plugins["badargs-plugin"]
    assert info.error and "invalid hook implementation" in info.error and "extra" in info.error


def test_registering_a_wrong_type_is_reported(tmp_path, monkeypatch):
    source = """
from scircuits import hookimpl

@hookimpl
def register_ablations(register):
    register(object())
"""
    make_plugin_dist(tmp_path, "wrongtype-plugin", unique("wrongtype"), source)
    monkeypatch.syspath_prepend(str(tmp_path))
    info = load_plugins().plugins["wrongtype-plugin"]
    assert "is not an Ablation" in info.error


def test_allow_list_limits_entry_points(tmp_path, monkeypatch):
    make_plugin_dist(tmp_path / "a", "plugin-a", unique("pa"), BENCHMARK_PLUGIN.format(name="bench-a"))
    make_plugin_dist(tmp_path / "b", "plugin-b", unique("pb"), BENCHMARK_PLUGIN.format(name="bench-b"))
    monkeypatch.syspath_prepend(str(tmp_path / "a"))
    monkeypatch.syspath_prepend(str(tmp_path / "b"))
    monkeypatch.setenv("SCIRCUITS_LOAD_PLUGINS", "plugin-b")
    plugins = load_plugins()
    assert "plugin-b" in plugins.plugins and "plugin-a" not in plugins.plugins
    monkeypatch.setenv("SCIRCUITS_LOAD_PLUGINS", "")
    plugins = load_plugins()
    assert all(p.builtin for p in plugins.plugins.values())
    assert "zero" in plugins.ablations  # built-ins always load
    monkeypatch.setenv("SCIRCUITS_LOAD_PLUGINS", "plugin-b,plugn-a")  # a typo loads nothing of its name
    plugins = load_plugins()
    assert "plugin-b" in plugins.plugins and "plugin-a" not in plugins.plugins
    (error,) = plugins.plugins["plugn-a"].errors
    assert "SCIRCUITS_LOAD_PLUGINS names 'plugn-a', but no installed plugin is called that" in error
    assert "plugin-a" in error and "plugin-b" in error
    assert plugins.plugins["plugn-a"] in plugins.failed()  # said by run/ablate and `scircuits plugins`


def test_two_plugins_registering_one_name_is_an_error_naming_both(tmp_path, monkeypatch):
    make_plugin_dist(tmp_path / "a", "first-plugin", unique("fa"), BENCHMARK_PLUGIN.format(name="clash"))
    make_plugin_dist(tmp_path / "b", "second-plugin", unique("fb"), BENCHMARK_PLUGIN.format(name="clash"))
    monkeypatch.syspath_prepend(str(tmp_path / "a"))
    monkeypatch.syspath_prepend(str(tmp_path / "b"))
    plugins = load_plugins()
    with pytest.raises(PluginConflictError, match="first-plugin and second-plugin"):
        plugins.benchmarks.get("clash")
    assert "first-plugin and second-plugin" in plugins.plugins["second-plugin"].error


def test_unknown_name_lists_known_names_and_suggests():
    plugins = load_plugins(entry_points_too=False)
    with pytest.raises(UnknownNameError) as err:
        plugins.ablations.get("zeroo")
    message = str(err.value)
    assert "Unknown ablation 'zeroo'" in message
    assert "Did you mean 'zero'?" in message
    assert "clamp, mean, resample, zero" in message


def load_one(tmp_path, monkeypatch, dist: str, source: str):
    make_plugin_dist(tmp_path / dist, dist, unique(dist.replace("-", "_")), source)
    monkeypatch.syspath_prepend(str(tmp_path / dist))
    plugins = load_plugins()
    return plugins, plugins.plugins[dist]


SHADOWING_PLUGIN = """
from scircuits import Ablation, hookimpl

class Zero(Ablation):
    name = "zero"

class Mine(Ablation):
    name = "mine"

@hookimpl
def register_ablations(register):
    register(Zero())
    register(Mine())
"""


def test_a_builtin_name_stays_the_builtins_and_only_the_plugins_object_is_refused(tmp_path, monkeypatch):
    plugins, info = load_one(tmp_path, monkeypatch, "shadow-plugin", SHADOWING_PLUGIN)
    assert plugins.ablations.default() == "zero"
    assert plugins.ablations.owner("zero") == "builtin:ablations"
    assert plugins.ablations.owner("mine") == "shadow-plugin"
    assert info.registered == {"ablations": ["mine"]}
    (error,) = info.errors
    assert "taken by the built-in plugin builtin:ablations" in error and "shadow-plugin's" in error
    assert "rename it" in error and "SCIRCUITS_LOAD_PLUGINS" not in error


def test_a_clash_between_plugins_refuses_that_name_alone(tmp_path, monkeypatch):
    make_plugin_dist(tmp_path / "a", "first-plugin", unique("fa"), BENCHMARK_PLUGIN.format(name="clash"))
    source = BENCHMARK_PLUGIN.replace("register(Tiny())", "register(Tiny())\n    register(Other())")
    source += "\nclass Other(Tiny):\n    name = 'synth-first'\n"
    make_plugin_dist(tmp_path / "b", "second-plugin", unique("fb"), source.format(name="clash"))
    monkeypatch.syspath_prepend(str(tmp_path / "a"))
    monkeypatch.syspath_prepend(str(tmp_path / "b"))
    plugins = load_plugins()
    assert plugins.benchmarks.owner("synth-first") == "second-plugin"
    assert plugins.plugins["second-plugin"].registered == {"benchmarks": ["synth-first"]}
    with pytest.raises(PluginConflictError, match="first-plugin and second-plugin, so neither"):
        plugins.benchmarks.get("clash")


def test_every_error_of_a_plugin_is_kept(tmp_path, monkeypatch):
    source = """
from scircuits import Ablation, Benchmark, hookimpl

class Zero(Ablation):
    name = "zero"

class Mean(Ablation):
    name = "mean"

class Arithmetic(Benchmark):
    name = "arithmetic"

@hookimpl
def register_ablations(register):
    register(Zero())
    register(Mean())

@hookimpl
def register_benchmarks(register):
    register(Arithmetic())
"""
    _, info = load_one(tmp_path, monkeypatch, "thrice-plugin", source)
    assert len(info.errors) == 3
    assert [n for n in ("arithmetic", "zero", "mean") for e in info.errors if f"name {n!r}" in e] == [
        "arithmetic",
        "zero",
        "mean",
    ]
    assert info.error == "; ".join(info.errors) and info.to_dict()["errors"] == info.errors


def test_a_hook_argument_of_the_wrong_name_says_the_right_one_in_one_line(tmp_path, monkeypatch):
    source = """
from scircuits import hookimpl

@hookimpl
def register_benchmarks(reg):
    pass
"""
    _, info = load_one(tmp_path, monkeypatch, "argname-plugin", source)
    assert info.errors == [
        "invalid hook implementation register_benchmarks(reg): the hook passes no 'reg'; "
        "write def register_benchmarks(register)"
    ]


def test_a_hook_returning_its_objects_is_told_to_call_register(tmp_path, monkeypatch):
    source = BENCHMARK_PLUGIN.replace("    register(Tiny())", "    return [Tiny()]")
    plugins, info = load_one(tmp_path, monkeypatch, "returning-plugin", source.format(name="returned"))
    assert info.errors == ["register_benchmarks returned a value; call register(obj) instead"]
    assert "returned" not in plugins.benchmarks


def test_registering_a_class_says_to_register_an_instance(tmp_path, monkeypatch):
    source = BENCHMARK_PLUGIN.replace("register(Tiny())", "register(Tiny)\n    register(Fine())")
    source += "\nclass Fine(Tiny):\n    name = 'fine'\n"
    plugins, info = load_one(tmp_path, monkeypatch, "class-plugin", source.format(name="tiny"))
    (error,) = info.errors
    assert error.endswith("is not a Benchmark: register an instance: Tiny()")
    assert "fine" in plugins.benchmarks


def test_conflict_messages_use_the_singular_of_the_family():
    from scircuits.platform.manager.registry import Registry

    class Thing:
        name = "x"

    registry: Registry[Thing] = Registry("analyses")
    registry.add(Thing(), owner="a")
    with pytest.raises(PluginConflictError, match=r"^analysis name 'x'"):
        registry.add(Thing(), owner="b")


def test_summary_lines_returning_a_str_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    from scircuits.cli.causal import summarise

    source = """
from scircuits import Analysis, AnalysisResult, hookimpl

class Said(Analysis):
    name = "said"
    Result = AnalysisResult

    def headline(self, result):
        return ["said"]

    def summary_lines(self, result):
        return "one line"

@hookimpl
def register_analyses(register):
    register(Said())
"""
    plugins, _ = load_one(tmp_path, monkeypatch, "str-lines-plugin", source)
    results = SimpleNamespace(n_examples=3, analyses=["said"], result_of=lambda analysis: None)
    summarise(tmp_path, results, plugins)
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{tmp_path / 'results.json'}: 3 examples; said"]
    assert err == (
        "warning: plugin str-lines-plugin: analysis 'said': summary_lines returned a str; "
        "return a list of lines ([line, ...])\n"
    )


def _doc_snippets() -> list[str]:
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    return re.findall(r"```python\n(.*?)```", doc, re.S)


def test_the_docs_snippets_names_do_not_clash_with_the_example_plugin():
    import re
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "scircuits-example-plugin"
    named = re.compile(r"""\bname\s*=\s*["']([^"']+)["']""")
    taken = {n for path in example.rglob("*.py") for n in named.findall(path.read_text())}
    in_docs = {n for snippet in _doc_snippets() for n in named.findall(snippet)}
    assert in_docs and not in_docs & taken


def test_the_docs_synth_task_runs_at_its_default_size():
    (snippet,) = [s for s in _doc_snippets() if "class Parity" in s]
    scope: dict[str, object] = {}
    exec(snippet, scope)
    benchmark = scope["SynthTaskBenchmark"](scope["Parity"]())
    assert len(list(benchmark.examples("test"))) == len(list(benchmark.examples("train"))) == 200


def test_a_hook_function_without_its_marker_is_reported(tmp_path, monkeypatch):
    source = """
from scircuits import Benchmark


def register_benchmarks(register):
    register(None)
"""
    make_plugin_dist(tmp_path, "unmarked-plugin", "unmarked_mod", source)
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin_set = load_plugins()
    info = plugin_set.plugins["unmarked-plugin"]
    assert info.errors == ["register_benchmarks is not marked as a hook: put @scircuits.hookimpl above it"]
