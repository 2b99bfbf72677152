"""Pieces every command shares: config loading from file + flags, JSON output, key=value options."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import click

from scircuits.platform.common.logs import get_logger
from scircuits.platform.config import StageConfig

C = TypeVar("C", bound=StageConfig)
F = TypeVar("F", bound=Callable[..., Any])


def config_option(f: F) -> F:
    return click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False),
        help="TOML or YAML file with this stage's settings; flags override it.",
    )(f)


def json_option(f: F) -> F:
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print the typed result (docs/api.md) as JSON on stdout instead of the summary.",
    )(f)


SAE_OPTION_HELP = "An SAE hyperparameter, e.g. k=32 (see `scircuits saes --json`); repeatable."


def sae_option(f: F) -> F:
    """``--sae-option KEY=VALUE``: an SAE hyperparameter, on ``train`` and ``run``; ``--hparam``, its
    old name on ``train``, still works (hidden) and warns once."""

    def warn(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
        if value:
            get_logger(__name__).warning("--hparam is deprecated: use --sae-option (the same KEY=VALUE)")
        return value

    f = click.option("--hparam", "deprecated_sae_options", multiple=True, hidden=True, callback=warn)(f)
    return click.option(
        "--sae-option", "sae_options", multiple=True, metavar="KEY=VALUE", help=SAE_OPTION_HELP
    )(f)


def sae_option_items(deprecated: tuple[str, ...], current: tuple[str, ...]) -> tuple[str, ...]:
    """``--hparam`` then ``--sae-option`` items, a key given by both taken from ``--sae-option`` (the
    new name wins); a key repeated within one of them stays, for ``parse_key_values`` to refuse."""
    new_keys = {item.split("=", 1)[0].strip() for item in current if "=" in item}
    kept = tuple(item for item in deprecated if item.split("=", 1)[0].strip() not in new_keys)
    return kept + current


def echo_result(result: Any) -> None:
    """A typed result of the API (a pydantic model, or a list of them) as JSON on stdout; a non-finite
    number is null."""
    from scircuits.platform.contract import jsonvalues

    many = isinstance(result, list)
    data = [r.model_dump(mode="python") for r in result] if many else result.model_dump(mode="python")
    click.echo(jsonvalues.dumps(data, indent=2))


def stage_config(cls: type[C], config_file: str | None, flags: Mapping[str, Any]) -> C:
    """Merge the config file with the flags that were given (None = not given) and validate."""
    config = cls.from_sources(config_file, flags)
    if getattr(config, "progress", True) is False:
        from scircuits.platform.common.progress import silence_library_progress_bars

        silence_library_progress_bars()
    return config


def parse_key_values(items: Iterable[str], what: str) -> dict[str, Any]:
    """``["k=3", "name=x"]`` -> ``{"k": 3, "name": "x"}``; values are read as JSON when they parse."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=what)
        key, raw = item.split("=", 1)
        if key.strip() in out:
            raise click.BadParameter(
                f"{key.strip()} is given twice ({out[key.strip()]!r}, then {raw!r}): give it once",
                param_hint=what,
            )
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
        except RecursionError:
            raise click.BadParameter(
                f"{key.strip()}: the value is nested too deeply", param_hint=what
            ) from None
    return out


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _cell(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return "" if value is None else str(value)


def echo_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A plain aligned text table (no rich: listing must stay fast)."""
    cells = [[_cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=False)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False)).rstrip())
