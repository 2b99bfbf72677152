"""The `scircuits` command line. Subcommands live in their own modules and import lazily, so
listing plugins never pays for torch, transformers or nnsight."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from scircuits import __version__
from scircuits.platform.errors import ScircuitsError

# command name -> "module:attribute"
COMMANDS: dict[str, str] = {
    "plugins": "scircuits.cli.listing:plugins",
    "models": "scircuits.cli.listing:models",
    "benchmarks": "scircuits.cli.listing:benchmarks",
    "saes": "scircuits.cli.listing:saes",
    "ablations": "scircuits.cli.listing:ablations",
    "collect": "scircuits.cli.collect:collect",
    "inspect": "scircuits.cli.inspect:inspect",
    "train": "scircuits.cli.train:train",
    "validate": "scircuits.cli.train:validate",
    "ablate": "scircuits.cli.causal:ablate",
    "run": "scircuits.cli.causal:run",
    "report": "scircuits.cli.causal:report",
    "dashboard": "scircuits.cli.dashboard:dashboard",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(n for n in COMMANDS if self._spec_exists(n))

    @staticmethod
    def _spec_exists(name: str) -> bool:
        module = COMMANDS[name].split(":")[0]
        return importlib.util.find_spec(module) is not None

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS or not self._spec_exists(name):
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="scircuits")
def cli() -> None:
    """Find the sparse features a language model uses to reason, and test whether they matter.

    `scircuits run` does the whole study: trace a layer's activations on a benchmark, train a
    sparse autoencoder on them, ablate its features inside the model, and write a report.
    """


def main(argv: list[str] | None = None) -> Any:
    try:
        rv = cli.main(args=argv, prog_name="scircuits", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ScircuitsError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    if isinstance(rv, int) and rv:
        sys.exit(rv)
    return None
