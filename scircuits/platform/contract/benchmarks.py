"""Benchmarks: where examples come from. The core scores them from the model's logits."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from scircuits.platform.contract.errors import ConfigError, DataFormatError, ScircuitsError
from scircuits.platform.contract.options import parse_options


@dataclass(frozen=True)
class Example:
    """One scored item. ``target`` is the answer scored after ``prompt``.

    ``delimiter`` is the text that follows the answer in the benchmark's format (the "\\n" between
    few-shot lines, the "." that ends a sentence, the "}" that closes a box). It is scored as part of
    the target: the scored continuation is ``target + delimiter``, so an answer counts as correct
    only when the model also ends it there (" 83" followed by "0" is " 830", not " 83"), and the
    log-prob sums over the delimiter's tokens too. "" scores the target alone; use it only where the
    answer's end is fixed by the task (a fixed-length answer) or for multiple choice, whose choices
    compete with each other. Tracing (``scircuits collect``) uses prompt + target, without it.

    Multiple choice: ``choices`` are the candidate continuations, ``answer_index`` the gold one and
    ``target == choices[answer_index]``; a delimiter, when given, follows every choice.
    """

    id: str
    prompt: str
    target: str
    choices: tuple[str, ...] | None = None
    answer_index: int | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    delimiter: str = ""

    @property
    def continuations(self) -> tuple[str, ...]:
        """The scored continuations: each choice (or the target alone), followed by the delimiter."""
        answers = self.choices if self.choices is not None else (self.target,)
        return tuple(answer + self.delimiter for answer in answers)

    def __post_init__(self) -> None:
        for text in (self.prompt, self.target, self.delimiter, *(self.choices or ())):
            _check_encodable(text, self.id)
        if not isinstance(self.delimiter, str):
            raise ValueError(f"example {self.id}: delimiter must be a string, got {self.delimiter!r:.40}")
        if self.choices is not None:
            if self.answer_index is None or not 0 <= self.answer_index < len(self.choices):
                raise ValueError(f"example {self.id}: answer_index must index choices")
            if self.choices[self.answer_index] != self.target:
                raise ValueError(f"example {self.id}: target must equal choices[answer_index]")


def _check_encodable(text: Any, example_id: str) -> None:
    """A lone surrogate (a JSON escape such as "\\ud800" without its pair) is not Unicode text: no
    tokenizer takes it, so it is refused where the example is read, before any weights load."""
    if not isinstance(text, str):
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = f"\\u{ord(text[exc.start]):04x}"
        raise DataFormatError(
            f"example {example_id}: its text holds a lone surrogate ({bad} at character {exc.start + 1}), "
            "which is not valid Unicode; fix the data file (surrogate escapes come in pairs)"
        ) from None


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

    def read_examples(
        self,
        split: str = "test",
        limit: int | None = None,
        seed: int = 0,
        options: Mapping[str, Any] | BaseModel | None = None,
    ) -> Iterator[Example]:
        """``examples`` as the platform reads them, each checked: an ``Example`` with a non-empty
        target and an id of its own. A mistake, or an error the plugin raises, is one ConfigError
        naming the benchmark (the platform never calls ``examples`` directly)."""
        seen: set[str] = set()
        where = f"benchmark {self.name!r}"
        try:
            for example in self.examples(split, limit, seed, options):
                if not isinstance(example, Example):
                    raise ConfigError(
                        f"{where} gave a {type(example).__name__}, not an Example; yield "
                        "scircuits.Example(id=..., prompt=..., target=...)"
                    )
                if not isinstance(example.target, str) or not example.target:
                    raise ConfigError(f"{where}: example {example.id!r} has an empty target; give its answer")
                if example.id in seen:
                    raise ConfigError(
                        f"{where} gives the example id {example.id!r} twice; give each example its own id "
                        "(examples.jsonl and the splits are keyed by it)"
                    )
                seen.add(example.id)
                yield example
        except (ScircuitsError, KeyboardInterrupt, GeneratorExit):
            raise
        except Exception as exc:
            raise ConfigError(
                f"{where} failed while reading its examples: {type(exc).__name__}: {exc}; fix the benchmark "
                "or its data"
            ) from exc

    def label(self, options: Mapping[str, Any] | BaseModel | None = None) -> str:
        """A short tag for options that change what the score measures (e.g. a prompt mode,
        "cot-none"), or "" when none do; it goes into the run directory's name and the report."""
        return ""

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
