"""The API's checks of its own arguments, which the CLI's click types make for a command: a value of the
wrong type is a ``ConfigError`` in one line naming the argument and what to give, before any work."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from scircuits.platform.contract.errors import ConfigError

PATH = "a path (a str or pathlib.Path)"
M = TypeVar("M", bound=BaseModel)


def given(value: Any) -> str:
    """``value`` as a message names it: None, or its type and a short repr."""
    if value is None:
        return "None"
    text = repr(value)
    return f"the {type(value).__name__} {text if len(text) <= 40 else text[:39] + '…'}"


def a(word: str) -> str:
    """``word`` after its indefinite article: "an AblateConfig", "a dict"."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def path_arg(value: Any, what: str) -> Path:
    """``value`` as a Path; ConfigError when it is no path (``what``: "load_run: the run directory")."""
    if not is_path(value):
        raise ConfigError(f"{what} must be {PATH}, not {given(value)}")
    return Path(value)


def optional_path(value: Any, what: str) -> Path | None:
    return None if value is None else path_arg(value, what)


def path_list(value: Any, what: str, each: str) -> list[Path]:
    """A path or an iterable of paths as a list; ConfigError naming ``what`` (or ``each`` element)."""
    if is_path(value):
        return [Path(value)]
    if not isinstance(value, Iterable) or isinstance(value, (bytes, Mapping)):
        raise ConfigError(f"{what} must be {PATH} or a list of them, not {given(value)}")
    return [path_arg(item, each) for item in value]


def whole_number(value: Any, what: str) -> int | None:
    """None or an int (not a bool); ConfigError otherwise."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(f"{what} must be a whole number, not {given(value)}")
    return value


def switch(value: Any, what: str) -> bool:
    """True or False; ConfigError otherwise ("yes", 1, None would each read as something else)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be True or False, not {given(value)}")
    return value


def config_of(cls: type[M], config: Any) -> M | None:
    """``config`` when it is a ``cls`` or None; ConfigError otherwise (a dict, a str, another config)."""
    if config is not None and not isinstance(config, cls):
        raise ConfigError(
            f"give {a(cls.__name__)} (or its fields as keywords), not {a(type(config).__name__)}"
        )
    return config


def plugin_set(plugins: Any) -> Any:
    """``plugins`` (a PluginSet), or the process-wide one the CLI uses when None."""
    from scircuits.platform.manager.plugin_set import PluginSet, get_plugins

    if plugins is None:
        return get_plugins()
    if not isinstance(plugins, PluginSet):
        raise ConfigError(
            f"plugins must be a PluginSet (or None: the installed plugins, as the CLI uses), "
            f"not {given(plugins)}"
        )
    return plugins
