"""Validating plugin options (pydantic) with errors that name the field and the reason."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from scircuits.platform.contract.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def _message(error: Any) -> str:
    """A validator's own message without pydantic's "Value error, " prefix."""
    if error.get("type") == "value_error" and "error" in error.get("ctx", {}):
        return str(error["ctx"]["error"])
    return str(error["msg"])


def describe_validation_error(exc: ValidationError) -> str:
    """A pydantic error in one line for a user: each problem as ``field: message (got value)``, a
    model validator's own message without pydantic's prefix. For a plugin's settings::

        try:
            settings = MySettings(**flags)
        except pydantic.ValidationError as exc:
            raise scircuits.ConfigError(f"invalid settings: {scircuits.describe_validation_error(exc)}")
    """
    return "; ".join(
        (f"{'.'.join(map(str, e['loc']))}: " if e["loc"] else "")
        + _message(e)
        + (
            f" (got {e['input']!r})"
            if e.get("type") != "missing" and not isinstance(e.get("input"), dict)
            else ""
        )
        for e in exc.errors()
    )


def parse_options(model: type[M], raw: Mapping[str, Any] | BaseModel | None, what: str) -> M:
    """Validate ``raw`` into ``model``; None values mean "not given". ``what`` names the owner."""
    if isinstance(raw, model):
        return raw
    if isinstance(raw, BaseModel):
        raw = raw.model_dump()
    values = {k: v for k, v in dict(raw or {}).items() if v is not None}
    nonfinite = [k for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)]
    if nonfinite:
        raise ConfigError(f"{what}: {nonfinite[0]} must be a finite number, got {values[nonfinite[0]]!r}")
    try:
        return model(**values)
    except ValidationError as exc:
        fields = ", ".join(model.model_fields) or "(none)"
        raise ConfigError(f"{what}: {describe_validation_error(exc)}. Valid fields: {fields}.") from None


def defaults(model: type[BaseModel]) -> dict[str, Any]:
    return {k: f.default for k, f in model.model_fields.items() if not f.is_required()}
