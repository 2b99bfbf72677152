"""The `scircuits` command line. Subcommands live in their own modules and import lazily, so
listing plugins never pays for torch, transformers or nnsight. Plugins add commands with the
``register_commands(cli)`` hook (as in `llm`); a built-in command's name cannot be taken."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from typing import Any
from weakref import WeakKeyDictionary

import click

from scircuits import __version__
from scircuits.platform.common.logs import LEVEL_ENV, set_level, user_level
from scircuits.platform.contract.errors import ConfigError, ScircuitsError
from scircuits.platform.manager.plugin_set import get_plugins

# command name -> "module:attribute"
COMMANDS: dict[str, str] = {
    "plugins": "scircuits.cli.listing:plugins",
    "models": "scircuits.cli.listing:models",
    "benchmarks": "scircuits.cli.listing:benchmarks",
    "saes": "scircuits.cli.listing:saes",
    "ablations": "scircuits.cli.listing:ablations",
    "analyses": "scircuits.cli.listing:analyses",
    "collect": "scircuits.cli.collect:collect",
    "inspect": "scircuits.cli.inspect:inspect",
    "train": "scircuits.cli.train:train",
    "validate": "scircuits.cli.train:validate",
    "ablate": "scircuits.cli.causal:ablate",
    "run": "scircuits.cli.causal:run",
    "report": "scircuits.cli.causal:report",
    "circuit": "scircuits.cli.circuit:circuit",
    "compare": "scircuits.cli.compare:compare",
    "dashboard": "scircuits.cli.dashboard:dashboard",
}


_plugin_commands: WeakKeyDictionary[Any, dict[str, click.Command]] = WeakKeyDictionary()


def plugin_commands() -> dict[str, click.Command]:
    """Commands the loaded plugins add through ``register_commands(cli)``; a failing hook is recorded
    on its plugin (``scircuits plugins`` shows it) and never stops the CLI."""
    plugins = get_plugins()
    if plugins in _plugin_commands:
        return _plugin_commands[plugins]
    commands: dict[str, click.Command] = {}
    for name, module in plugins.pm.list_name_plugin():
        impl = getattr(module, "register_commands", None)
        if impl is None or not hasattr(impl, "scircuits_impl"):
            continue
        group = click.Group()
        info = plugins.plugins.get(name)
        try:
            impl(cli=group)
        except Exception as exc:
            if info is not None:
                info.error = f"register_commands raised {type(exc).__name__}: {exc}"
            continue
        added: list[str] = []
        for command_name, command in group.commands.items():
            if command_name in COMMANDS or command_name in commands:
                if info is not None:
                    info.error = (
                        f"command {command_name!r} is already defined; not adding {name}'s: rename it"
                    )
                continue
            commands[command_name] = command
            added.append(command_name)
        if added and info is not None:
            info.registered["commands"] = sorted(added)
    _plugin_commands[plugins] = commands
    return commands


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([n for n in COMMANDS if self._spec_exists(n)] + list(plugin_commands()))

    @staticmethod
    def _spec_exists(name: str) -> bool:
        module = COMMANDS[name].split(":")[0]
        return importlib.util.find_spec(module) is not None

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return plugin_commands().get(name)
        if not self._spec_exists(name):
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="scircuits")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr (no progress).")
@click.option("-v", "--verbose", is_flag=True, help="Debug messages too.")
def cli(quiet: bool, verbose: bool) -> None:
    """Find the sparse features a language model uses to reason, and test whether they matter.

    `scircuits run` does the whole study: trace a layer's activations on a benchmark, train a
    sparse autoencoder on them, ablate its features inside the model, and write a report.
    """
    if quiet and verbose:
        raise click.UsageError("give -q or -v, not both")
    chosen = user_level()  # not the level an earlier command of this process passed on
    if not (quiet or verbose) and chosen:  # -q / -v win over the variable
        try:
            set_level(chosen)
        except ConfigError as exc:
            raise ConfigError(f"${LEVEL_ENV}: {exc}") from None
        return
    set_level(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


def in_process_url(args: list[str]) -> str | None:
    """The first ``memory://`` URL among the arguments (``--out URL`` or ``--out=URL``), if any."""
    for arg in args:
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        if value.startswith("memory://"):
            return value
    return None


def main(argv: list[str] | None = None) -> Any:
    args = list(argv if argv is not None else sys.argv[1:])
    url = in_process_url(args)
    if url is not None:
        click.echo(
            f"Error: {url}: a memory:// folder lives inside one Python process, so a command starts "
            "with it empty and loses what it writes at exit; give a folder or an s3:// URL (memory:// "
            "works from the Python API)",
            err=True,
        )
        sys.exit(2)
    try:
        rv = cli.main(args=argv, prog_name="scircuits", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        # one line, as every other refusal: what was wrong, and where the help is
        where = exc.ctx.command_path if exc.ctx is not None else "scircuits"
        message = f"{exc.format_message()} (see `{where} --help`)"
        if (argv if argv is not None else sys.argv[1:])[:1] == ["train"]:
            from scircuits.cli.train import refused_rank_line

            message = refused_rank_line(argv if argv is not None else sys.argv[1:], message)
        if message:
            click.echo(f"Error: {message}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ScircuitsError as exc:
        if not getattr(exc, "reported_elsewhere", False):  # a torchrun rank whose line rank 0 prints
            click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except OSError as exc:
        from scircuits.platform.common.artifacts import DISK_ERRNOS, describe_os_error

        if exc.errno not in DISK_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(
            f"Error: {where}cannot write ({describe_os_error(exc)}); free space or choose another --out, "
            "then run the same command again (what was already written is kept)",
            err=True,
        )
        sys.exit(2)
    if isinstance(rv, int) and rv:
        sys.exit(rv)
    return None
