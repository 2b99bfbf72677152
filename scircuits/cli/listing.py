"""`scircuits plugins|models|benchmarks|saes|ablations|analyses`: what is installed. Imports no torch."""

from __future__ import annotations

from typing import Any

import click

from scircuits.cli import plugin_commands
from scircuits.cli.common import echo_json, echo_table
from scircuits.platform.causal.registry import analyses_of, study_order
from scircuits.platform.contract.errors import ConfigError, ScircuitsError
from scircuits.platform.manager.plugin_set import get_plugins

json_flag = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


@click.command()
@json_flag
def plugins(as_json: bool) -> None:
    """List loaded plugins: version, distribution, hooks and the names each registered.

    Plugins that failed to load are listed with their error. Set SCIRCUITS_LOAD_PLUGINS to a
    comma-separated allow-list of third-party plugin names (empty: none) to skip broken ones.
    """
    plugin_set = get_plugins()
    analyses_of(plugin_set)  # runs the analysis and command hooks, so that their names and errors show
    plugin_commands()
    infos = list(plugin_set.plugins.values())
    if as_json:
        echo_json([i.to_dict() for i in infos])
        return
    for info in infos:
        where = f"{info.distribution or '?'} {info.version or ''}".strip()
        click.echo(f"{info.name}  ({info.module}; {where})")
        if info.hooks:
            click.echo(f"  hooks: {', '.join(info.hooks)}")
        for family, names in info.registered.items():
            click.echo(f"  {family}: {', '.join(names)}")
        for error in info.errors:
            click.echo(f"  ERROR: {error}")


def warn_failed(plugin_set: Any) -> None:
    """One stderr line per error of each plugin, naming the plugin."""
    for failed in plugin_set.failed():
        for error in failed.errors:
            click.echo(f"warning: plugin {failed.name}: {error}", err=True)


def _family_command(family: str, columns: list[str], help_text: str) -> click.Command:
    @click.command(name=family, help=help_text)
    @json_flag
    def command(as_json: bool) -> None:
        plugin_set = get_plugins()
        registry = plugin_set.registries[family]
        rows: list[dict[str, Any]] = []
        for obj in registry:
            rows.append(
                {
                    "name": obj.name,
                    "default": "*" if registry.is_default(obj.name) else "",
                    "description": obj.description,
                    "plugin": registry.owner(obj.name),
                    **obj.facts(),
                }
            )
        if as_json:
            echo_json([{**row, "default": bool(row["default"])} for row in rows])
        else:
            echo_table(rows, ["name", "default", *columns[1:]])
        warn_failed(plugin_set)
        try:
            registry.default()
        except ScircuitsError as exc:
            click.echo(f"warning: {exc}", err=True)

    return command


models = _family_command(
    "models",
    ["name", "hf_id", "n_layers", "d_model", "default_layer", "description"],
    "List model adapters (name, weights, layers, width); * marks the default.",
)
benchmarks = _family_command(
    "benchmarks",
    ["name", "splits", "multiple_choice", "description"],
    "List benchmarks; * marks the default.",
)
saes = _family_command(
    "saes", ["name", "saelens_architecture", "description"], "List SAE variants; * marks the default."
)
ablations = _family_command(
    "ablations", ["name", "options", "description"], "List ablation strategies; * marks the default."
)


@click.command()
@json_flag
def analyses(as_json: bool) -> None:
    """List the analyses of the causal study, in the order `scircuits ablate` runs them."""
    plugin_set = get_plugins()
    registry = analyses_of(plugin_set)
    try:
        ordered = study_order(registry)
        problem = None
    except ConfigError as exc:
        ordered, problem = sorted(registry, key=lambda a: (a.order, a.name)), str(exc)
    rows = [
        {
            "name": a.name,
            "order": a.order,
            "after": ",".join(a.after),
            "fields": ",".join(a.Result.model_fields),
            "plugin": registry.owner(a.name),
            "description": a.description,
        }
        for a in ordered
    ]
    if as_json:
        echo_json(rows)
    else:
        echo_table(rows, ["name", "order", "after", "fields", "plugin", "description"])
    warn_failed(plugin_set)
    if problem:
        click.echo(f"warning: {problem}", err=True)
