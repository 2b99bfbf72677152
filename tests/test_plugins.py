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
    assert "is not a Ablation" in info.error


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
