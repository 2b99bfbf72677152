"""The listing commands, `plugins`, --version, and a broken plugin that must not stop the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from scircuits import __version__
from tests.cli_helpers import run_cli
from tests.plugin_factory import make_plugin_dist

FAMILIES = ["models", "benchmarks", "saes", "ablations"]


@pytest.fixture(scope="module")
def broken_plugin_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    make_plugin_dist(
        root, "exploding-plugin", "exploding_plugin_mod", "raise ImportError('no such thing: libfoo')\n"
    )
    return root


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"scircuits, version {__version__}"


@pytest.mark.parametrize("family", FAMILIES)
def test_listing_json_is_a_list_of_named_objects(family):
    result = run_cli(family, "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert isinstance(rows, list) and rows
    assert all(isinstance(r["name"], str) and "description" in r and "plugin" in r for r in rows)


def test_ablations_json_lists_the_four_builtins():
    rows = json.loads(run_cli("ablations", "--json").stdout)
    names = {r["name"] for r in rows}
    assert {"zero", "mean", "resample", "clamp"} <= names


@pytest.mark.parametrize("family", FAMILIES)
def test_listing_text_table(family):
    result = run_cli(family)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.startswith("NAME") and rows


def test_listing_imports_no_heavy_library():
    code = (
        "import sys\n"
        "from scircuits.cli import cli\n"
        "for cmd in ['plugins', 'models', 'benchmarks', 'saes', 'ablations']:\n"
        "    cli.main([cmd, '--json'], standalone_mode=False)\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'nnsight') if m in sys.modules)\n"
        "sys.stderr.write('HEAVY=' + ','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "HEAVY=" in result.stderr and result.stderr.rsplit("HEAVY=", 1)[1] == ""


def test_broken_plugin_is_shown_and_everything_else_works(broken_plugin_path):
    result = run_cli("plugins", extra_path=broken_plugin_path)
    assert result.returncode == 0, result.stderr
    assert "exploding-plugin" in result.stdout
    assert "ERROR: import failed: ImportError: no such thing: libfoo" in result.stdout
    rows = json.loads(run_cli("plugins", "--json", extra_path=broken_plugin_path).stdout)
    broken = next(r for r in rows if r["name"] == "exploding-plugin")
    assert broken["error"].startswith("import failed") and broken["distribution"] == "exploding-plugin"
    for family in FAMILIES:
        listed = run_cli(family, "--json", extra_path=broken_plugin_path)
        assert listed.returncode == 0 and json.loads(listed.stdout)
        assert "warning: plugin exploding-plugin: import failed" in listed.stderr
    assert run_cli("--help", extra_path=broken_plugin_path).returncode == 0


def test_every_refusal_is_shown_and_the_builtin_default_stays(tmp_path):
    make_plugin_dist(
        tmp_path,
        "shadowing-plugin",
        "shadowing_plugin_mod",
        """
        from scircuits import Ablation, hookimpl

        class Zero(Ablation):
            name = "zero"

        class Mean(Ablation):
            name = "mean"

        @hookimpl
        def register_ablations(register):
            register(Zero())
            register(Mean())
        """,
    )
    listing = run_cli("plugins", extra_path=tmp_path).stdout
    shown = listing.split("shadowing-plugin  (", 1)[1]
    assert shown.count("ERROR: ablation name") == 2 and "  ablations:" not in shown
    ablations = run_cli("ablations", "--json", extra_path=tmp_path)
    rows = {r["name"]: r for r in json.loads(ablations.stdout)}
    assert rows["zero"]["default"] and rows["zero"]["plugin"] == "builtin:ablations"
    warnings = ablations.stderr.splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: plugin shadowing-plugin: ") for w in warnings)


def test_allow_list_rescues_from_a_broken_plugin(broken_plugin_path):
    result = run_cli("plugins", "--json", extra_path=broken_plugin_path, env={"SCIRCUITS_LOAD_PLUGINS": ""})
    names = {r["name"] for r in json.loads(result.stdout)}
    assert "exploding-plugin" not in names and "builtin:ablations" in names


def test_every_command_has_help():
    from scircuits.cli import COMMANDS, cli, plugin_commands

    for name in cli.list_commands(None):  # type: ignore[arg-type]
        assert name in COMMANDS or name in plugin_commands()  # built-in, or a plugin's (synth)
        result = run_cli(name, "--help")
        assert result.returncode == 0, f"{name}: {result.stderr}"
        assert "Usage: " in result.stdout


def test_unknown_command_is_a_clear_error():
    result = run_cli("colect")
    assert result.returncode == 2
    assert "No such command 'colect'" in result.stderr


@pytest.fixture(scope="module")
def command_plugin_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("commands")
    make_plugin_dist(
        root,
        "greeting-plugin",
        "greeting_plugin_mod",
        """
        import click
        from scircuits import hookimpl

        @hookimpl
        def register_commands(cli):
            @cli.command()
            @click.argument("name")
            def greet(name):
                "Say hello."
                click.echo(f"hello {name}")

            @cli.command()
            def run():
                "Would shadow the built-in run."
        """,
    )
    return root


def test_a_plugin_adds_a_command_and_cannot_take_a_builtin_name(command_plugin_path):
    result = run_cli("greet", "world", extra_path=command_plugin_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello world"
    listing = run_cli("--help", extra_path=command_plugin_path)
    assert "greet" in listing.stdout and "Say hello." in listing.stdout
    rows = json.loads(run_cli("plugins", "--json", extra_path=command_plugin_path).stdout)
    plugin = next(r for r in rows if r["name"] == "greeting-plugin")
    assert plugin["registered"].get("commands") == ["greet"]
    assert "command 'run' is already defined" in plugin["error"]
    assert "Usage: scircuits run" in run_cli("run", "--help", extra_path=command_plugin_path).stdout
