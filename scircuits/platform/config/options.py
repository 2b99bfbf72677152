"""Click options generated from the pydantic configs: the flag's name, type, choices, default (shown
in the help) and help text all come from the field, so each setting is declared once.

Every generated option defaults to None (not given), so a config file's value stands unless a flag
overrides it. Dict fields get no generated option (commands read them as KEY=VALUE pairs).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import click
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from scircuits.platform.config.stages import RUN_SECTIONS, RunConfig, empty_item, flat_run_names


def int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    if empty_item(value) is not None:
        raise click.BadParameter(str(empty_item(value)))
    try:
        numbers = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a comma-separated list of integers, e.g. 1,5,10,50"
        ) from None
    if not numbers or any(n <= 0 for n in numbers):
        raise click.BadParameter(f"{value!r}: give positive integers, e.g. 1,5,10,50")
    return numbers


def name_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    """Comma-separated names; "none" or an empty string is the empty list."""
    if value is None:
        return None
    if value.strip().lower() in ("", "none"):
        return []
    if empty_item(value) is not None:
        raise click.BadParameter(str(empty_item(value)))
    return [part.strip() for part in value.split(",") if part.strip()]


def _unwrap_optional(annotation: Any) -> Any:
    """``X | None`` as ``X``, and ``Annotated[X, ...]`` (kept inside an Optional) as ``X``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            annotation = args[0]
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def default_of(info: FieldInfo) -> Any:
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return None if info.default is PydanticUndefined else info.default


def shown_default(value: Any) -> str | None:
    if value is None or value == {}:
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


class OrNone(click.ParamType):
    """A number, or ``none`` for a setting that may be unset (passed on as the text "none", which the
    config reads as None: a flag's None means "not given")."""

    def __init__(self, number: type) -> None:
        self.number = click.INT if number is int else click.FLOAT
        self.name = f"{self.number.name}|none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value.strip().lower() == "none":
            return "none"
        try:
            return self.number.convert(value, param, ctx)
        except click.BadParameter:
            self.fail(
                f"{value!r} is not {'an integer' if self.number is click.INT else 'a number'} or none",
                param,
                ctx,
            )


def may_be_none(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in typing.get_args(
        annotation
    )


def option_for(name: str, info: FieldInfo) -> Callable[[Any], Any] | None:
    """The click option of one field (None for a dict field)."""
    annotation = _unwrap_optional(info.annotation)
    flag = "--" + name.replace("_", "-")
    help_text = info.description or ""
    default = shown_default(default_of(info))
    if default is not None:
        help_text = f"{help_text}  [{default}]"
    kwargs: dict[str, Any] = {"default": None, "help": help_text}
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return click.option(f"{flag}/--no-{name.replace('_', '-')}", name, **kwargs)
    if origin is dict or annotation is dict:
        return None
    if origin is list and typing.get_args(annotation) == (str,):
        return click.option(flag, name, callback=name_list, metavar="NAME,NAME,...", **kwargs)
    if origin is list:
        return click.option(flag, name, callback=int_list, metavar="N,N,...", **kwargs)
    if origin is Literal:
        return click.option(
            flag, name, type=click.Choice([str(a) for a in typing.get_args(annotation)]), **kwargs
        )
    if annotation in (int, float):
        kind = OrNone(annotation) if may_be_none(info.annotation) else annotation
        return click.option(flag, name, type=kind, **kwargs)
    return click.option(flag, name, type=str, **kwargs)


def config_options(
    fields: Mapping[str, FieldInfo], leave_out: Iterable[str] = ()
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator adding one option per field (in declaration order) except ``leave_out``."""
    skipped = set(leave_out)
    options = [option_for(name, info) for name, info in fields.items() if name not in skipped]

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed([o for o in options if o is not None]):
            f = option(f)
        return f

    return decorate


def stage_options(config: type[BaseModel], leave_out: Iterable[str] = ()) -> Callable[..., Any]:
    """Options for every field of a stage config."""
    return config_options(config.model_fields, leave_out)


def run_fields() -> dict[str, FieldInfo]:
    """The run's shared fields, then each section's fields under their flat names (limit, top_k,
    train_tokens, collect_limit, ...)."""
    fields = {n: i for n, i in RunConfig.model_fields.items() if n not in RUN_SECTIONS}
    for flat, (section, name) in flat_run_names().items():
        fields[flat] = RUN_SECTIONS[section].model_fields[name]
    return fields


def run_options(leave_out: Iterable[str] = ()) -> Callable[..., Any]:
    return config_options(run_fields(), leave_out)
