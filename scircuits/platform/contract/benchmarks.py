"""Benchmarks: where examples come from. The core scores them from the model's logits."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.contract.options import parse_options


@dataclass(frozen=True)
class Example:
    """One scored item. ``target`` is the continuation scored after ``prompt``.

    Multiple choice: ``choices`` are the candidate continuations, ``answer_index`` the gold one and
    ``target == choices[answer_index]``.
    """

    id: str
    prompt: str
    target: str
    choices: tuple[str, ...] | None = None
    answer_index: int | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.choices is not None:
            if self.answer_index is None or not 0 <= self.answer_index < len(self.choices):
                raise ValueError(f"example {self.id}: answer_index must index choices")
            if self.choices[self.answer_index] != self.target:
                raise ValueError(f"example {self.id}: target must equal choices[answer_index]")


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Benchmark:
    """Base of every benchmark plugin.

    Subclasses set ``name``, ``description``, optionally ``Options`` (a pydantic model with
    ``extra="forbid"``; a ``data`` field takes a path or dataset id) and implement ``examples``.
    """

    # True on the one object used when the config names none (docs/plugins.md, "Defaults").
    default: ClassVar[bool] = False
    name: str = ""
    description: str = ""
    splits: tuple[str, ...] = ("test",)
    multiple_choice: bool = False
    Options: ClassVar[type[BaseModel]] = NoOptions

    def parse_options(self, raw: Mapping[str, Any] | BaseModel | None = None) -> BaseModel:
        return parse_options(self.Options, raw, f"benchmark {self.name!r} options")

    def examples(
        self,
        split: str = "test",
        limit: int | None = None,
        seed: int = 0,
        options: Mapping[str, Any] | BaseModel | None = None,
    ) -> Iterator[Example]:
        raise NotImplementedError

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ConfigError(
                f"benchmark {self.name!r} has no split {split!r}; its splits: {', '.join(self.splits)}"
            )

    def facts(self) -> dict[str, Any]:
        return {
            "splits": list(self.splits),
            "multiple_choice": self.multiple_choice,
            "options": list(self.Options.model_fields),
        }
