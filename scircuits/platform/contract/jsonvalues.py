"""Results files hold standard JSON only: a number that is not finite (NaN, inf) is written as null.

JSON has no NaN or infinity; Python's ``json`` would write the bare words ``NaN``/``Infinity``, which
other readers (browsers, jq, most languages) reject. A value is null where it is undefined (a
correlation of a constant, a ratio over zero, ...); docs/formats.md lists where that happens.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from scircuits.platform.contract.errors import ConfigError


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (at any depth) replaced by None; numpy scalars and arrays
    become Python numbers and lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if hasattr(value, "tolist") and type(value).__module__ == "numpy":
        return finite_or_none(value.tolist())
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` of ``value`` with non-finite numbers as null; never writes NaN or Infinity."""
    return json.dumps(finite_or_none(value), allow_nan=False, **kwargs)


def load_file(path: str | Path, what: str = "") -> Any:
    """The JSON value of a file; ConfigError, in one line, when it cannot be read as JSON (binary,
    not UTF-8, malformed, or nested deeper than Python's parser can go)."""
    name = f"{what} {path}" if what else str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{name} is not UTF-8 text (a binary file?); give a JSON file") from None
    except OSError as exc:
        raise ConfigError(f"{name} cannot be read ({exc.strerror or exc})") from None
    return parse_text(text, name)


def parse_text(text: str, name: str, fix: str = "give a file scircuits wrote") -> Any:
    """The JSON value of ``text`` (the content of the file called ``name``); ConfigError, in one
    line naming the line where it stops being JSON and ending with ``fix``, when it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name}, line {exc.lineno}: not valid JSON ({exc.msg}); {fix}") from None
    except RecursionError:
        raise ConfigError(f"{name}: JSON nested too deeply to read; {fix}") from None


def validate_nulls_as_nan(model: Any, data: Any) -> Any:
    """``model.model_validate(data)`` where a null that stands for a float field (at any depth) reads
    back as NaN: the inverse of writing a non-finite number as null. Any other mismatch raises the
    model's ValidationError as usual."""
    import copy

    from pydantic import ValidationError

    data = copy.deepcopy(data)
    while True:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            nulls = [e["loc"] for e in exc.errors() if e["type"] == "float_type" and e["input"] is None]
            if not nulls or not all(_set_at(data, loc, math.nan) for loc in nulls):
                raise


def _set_at(data: Any, loc: tuple[Any, ...], value: Any) -> bool:
    """Set ``data[loc[0]][loc[1]]...`` to ``value``; False when the path is not plain keys and indexes."""
    *parents, last = loc
    for key in parents:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return False
    try:
        if data[last] is not None:
            return False
        data[last] = value
    except (KeyError, IndexError, TypeError):
        return False
    return True
