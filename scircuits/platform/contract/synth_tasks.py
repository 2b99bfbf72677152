"""Synthetic tasks: problems whose intermediate variables are known at known token positions.

A task plugin (hook ``register_synth_tasks``) subclasses :class:`SynthTask`: it names its symbols
(the vocabulary: one token per whitespace-separated symbol), draws a :class:`SynthProblem` from a seeded
``random.Random``, and may declare :class:`SynthCounterfactual` edits. The trainer (``scircuits
synth train --task NAME``), the benchmark (:class:`SynthTaskBenchmark`) and the ``ground-truth``
analysis work from these declarations alone.

The label format (docs/ground_truth.md):

- ``SynthProblem.variables[p]`` describes token ``p`` of ``<bos>`` + prompt + answer: position 0 is
  ``<bos>``, the prompt's symbols follow, then the answer's. An empty dict: nothing known there.
- Values are integers (a bool is 0/1). Keys in ``SynthTask.index_keys`` name *where* (a column, a
  step), not a computed value; they are never scored.
- Each ``key=value`` becomes one binary label on the tokens where ``key`` is defined; a label needs
  ``MIN_LABEL_TOKENS`` tokens on each side in a run to be scored.

Pure Python: imports nothing heavy.
"""

from __future__ import annotations

import copy
import hashlib
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from scircuits.platform.contract.benchmarks import Benchmark, Example
from scircuits.platform.contract.errors import ConfigError, ScircuitsError

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
TEST_FRACTION_DENOMINATOR = 5
MIN_LABEL_TOKENS = 10
MAX_EXAMPLES = 100_000


def split_of(key: str) -> str:
    """ "test" for a fixed fifth of problem keys (a hash), "train" for the rest, whatever the seed."""
    digest = hashlib.sha256(key.encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") % TEST_FRACTION_DENOMINATOR == 0 else "train"


class ExhaustedError(ValueError):
    """A split has fewer distinct problems than were asked for."""


@dataclass(frozen=True)
class SynthProblem:
    """One problem: its symbols and, per token of ``<bos>`` + prompt + answer, its known variables."""

    task: str
    key: str  # canonical: equal keys are the same problem (it decides the split)
    prompt_tokens: tuple[str, ...]
    answer_tokens: tuple[str, ...]
    variables: tuple[dict[str, int], ...]  # one dict per token of the full sequence (often empty)
    facts: dict[str, Any] = field(default_factory=dict)  # the problem's inputs and derived values

    def __post_init__(self) -> None:
        if len(self.variables) != len(self.tokens):
            raise ValueError(
                f"problem {self.key}: {len(self.variables)} variable cells for {len(self.tokens)} tokens "
                "(<bos> + prompt + answer)"
            )
        for cell in self.variables:
            for name, value in cell.items():
                if not isinstance(value, int):
                    raise ValueError(f"problem {self.key}: variable {name} = {value!r} is not an int")
        if not self.answer_tokens:
            raise ValueError(f"problem {self.key}: empty answer")

    @property
    def prompt(self) -> str:
        return " ".join(self.prompt_tokens)

    @property
    def target(self) -> str:
        return " " + " ".join(self.answer_tokens)

    @property
    def tokens(self) -> tuple[str, ...]:
        return (BOS, *self.prompt_tokens, *self.answer_tokens)

    @property
    def answer_start(self) -> int:
        """Index (in ``tokens``) of the first answer token."""
        return 1 + len(self.prompt_tokens)

    @property
    def split(self) -> str:
        return split_of(self.key)


@dataclass(frozen=True)
class SynthCounterfactual:
    """``original`` with one variable flipped by a minimal edit of its input (same length).

    ``variable`` is ``name@index`` (``carry_in@2``: the carry into column 2) or a bare name;
    ``position`` the token where it sits in ``original``; ``depends`` whether ``original``'s answer
    depends on it (what an ablation of its representation should move); None means "the answers
    differ". Build one with :meth:`between`.
    """

    original: SynthProblem
    counterfactual: SynthProblem
    variable: str
    position: int
    changed_answer_positions: tuple[int, ...]
    depends: bool | None = None

    def __post_init__(self) -> None:
        if len(self.original.tokens) != len(self.counterfactual.tokens):
            raise ValueError(f"counterfactual {self.variable} of {self.original.key} changes the length")
        if self.name not in self.original.variables[self.position]:
            raise ValueError(
                f"counterfactual {self.variable} of {self.original.key}: token {self.position} holds no "
                f"variable {self.name!r}"
            )

    @classmethod
    def between(
        cls,
        original: SynthProblem,
        counterfactual: SynthProblem,
        variable: str,
        position: int,
        depends: bool | None = None,
    ) -> SynthCounterfactual:
        start = original.answer_start
        changed = tuple(
            start + i
            for i, (x, y) in enumerate(zip(original.answer_tokens, counterfactual.answer_tokens, strict=True))
            if x != y
        )
        return cls(original, counterfactual, variable, position, changed, depends)

    @property
    def name(self) -> str:
        return self.variable.split("@")[0]

    @property
    def value(self) -> int:
        return int(self.original.variables[self.position][self.name])

    @property
    def answer_depends(self) -> bool:
        return bool(self.changed_answer_positions) if self.depends is None else self.depends

    def record(self) -> dict[str, Any]:
        """What ``Example.meta["counterfactuals"]`` holds for it."""
        return {
            "variable": self.variable,
            "name": self.name,
            "position": self.position,
            "value": self.value,
            "prompt": self.counterfactual.prompt,
            "target": self.counterfactual.target,
            "changed_answer_positions": list(self.changed_answer_positions),
            "depends": self.answer_depends,
        }


class SynthTask:
    """Base of every synthetic task plugin.

    Subclasses set ``name``, ``description``, the size bounds (``size_name``: what the size counts,
    e.g. digits) and ``index_keys``, and implement ``symbols`` and ``draw``; ``counterfactuals`` is
    optional. Every problem of one size must have the same number of tokens, and ``draw`` must be a
    pure function of the generator (determinism). The instance carries its size: ``sized(n)``.
    """

    default: ClassVar[bool] = False
    name: str = ""
    description: str = ""
    size_name: ClassVar[str] = "size"
    default_size: ClassVar[int] = 1
    min_size: ClassVar[int] = 1
    max_size: ClassVar[int] = 1
    index_keys: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, size: int | None = None) -> None:
        self.size = self.check_size(size)

    def check_size(self, size: int | None) -> int:
        size = self.default_size if size is None else size
        if not self.min_size <= size <= self.max_size:
            raise ValueError(
                f"task {self.name!r}: {self.size_name} {size} is outside {self.min_size}..{self.max_size}"
            )
        return size

    def sized(self, size: int | None) -> SynthTask:
        """This task at another size (None: the default)."""
        other = copy.copy(self)
        other.size = self.check_size(size)
        return other

    # -- what a task defines ------------------------------------------------------------------

    def symbols(self) -> list[str]:
        """Every symbol a problem of this size may contain (one token each)."""
        raise NotImplementedError

    def draw(self, rng: random.Random) -> SynthProblem:
        """One problem (train or test split alike; the split is decided by its key)."""
        raise NotImplementedError

    def counterfactuals(self, problem: SynthProblem) -> list[SynthCounterfactual]:
        """One minimal edit per flippable variable of ``problem`` (none by default)."""
        return []

    def check(self, n: int = 64) -> None:
        """Draw ``n`` problems and their counterfactuals as training and scoring will: each a
        SynthProblem of the task's one length, in its symbols, with its variable cells; a mistake, or
        an error the task raises, is one ConfigError naming the task (call it before any work)."""
        where = f"synth task {self.name!r} ({self.size_name} {self.size})"
        symbols = set(self.vocabulary())
        rng = random.Random(f"{self._tag()}/check")
        length = None
        try:
            for _ in range(n):
                problem = self.draw(rng)
                if not isinstance(problem, SynthProblem):
                    raise ConfigError(
                        f"{where}: draw returned a {type(problem).__name__}, not a SynthProblem"
                    )
                outside = sorted(set(problem.tokens) - symbols)
                if outside:
                    raise ConfigError(
                        f"{where}: problem {problem.key} holds {', '.join(map(repr, outside))}, which "
                        "symbols() does not list; add them to symbols()"
                    )
                if length is not None and len(problem.tokens) != length:
                    raise ConfigError(
                        f"{where}: problems of {length} and {len(problem.tokens)} tokens; every problem of "
                        "a size must have one length (pad the operands)"
                    )
                length = len(problem.tokens)
                for counterfactual in self.counterfactuals(problem):
                    if not isinstance(counterfactual, SynthCounterfactual):
                        raise ConfigError(
                            f"{where}: counterfactuals returned a {type(counterfactual).__name__}; build "
                            "them with SynthCounterfactual.between"
                        )
        except ScircuitsError:
            raise
        except Exception as exc:
            raise ConfigError(f"{where}: {type(exc).__name__}: {exc}; fix the task") from exc

    # -- derived ------------------------------------------------------------------------------

    def vocabulary(self) -> list[str]:
        symbols = [s for s in self.symbols() if s not in SPECIAL_TOKENS]
        return [*SPECIAL_TOKENS, *dict.fromkeys(symbols)]

    def sequence_length(self) -> int:
        return len(self.draw(random.Random(0)).tokens)

    def _tag(self) -> str:
        return f"synth/{self.name}{self.size}"

    def problems(self, split: str, seed: int, stream: str = "examples") -> Iterator[SynthProblem]:
        """Distinct problems of ``split`` in a fixed order given (task, size, split, seed, stream)."""
        rng = random.Random(f"{self._tag()}/{split}/{seed}/{stream}")
        seen: set[str] = set()
        misses = 0
        while True:
            problem = self.draw(rng)
            if problem.split != split or problem.key in seen:
                misses += 1
                if misses > 1000 * (len(seen) + 1):
                    raise ExhaustedError(
                        f"{self.name} {self.size_name} {self.size}: only {len(seen)} distinct {split} "
                        "problems exist"
                    )
                continue
            seen.add(problem.key)
            yield problem

    def training_problems(self, seed: int) -> Iterator[SynthProblem]:
        """An endless stream of train-split problems (repeats allowed), fixed by the seed."""
        rng = random.Random(f"{self._tag()}/train-stream/{seed}")
        while True:
            problem = self.draw(rng)
            if problem.split == "train":
                yield problem

    def heldout_problems(self, n: int) -> list[SynthProblem]:
        """The fixed held-out set (test split; the same for every training seed); fewer when fewer exist."""
        problems: list[SynthProblem] = []
        stream = self.problems("test", seed=0, stream="heldout")
        while len(problems) < n:
            try:
                problems.append(next(stream))
            except ExhaustedError:
                break
        return problems

    def facts(self) -> dict[str, Any]:
        return {
            "size_name": self.size_name,
            "default_size": self.default_size,
            "sizes": f"{self.min_size}..{self.max_size}",
        }


class SynthOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int | None = Field(default=None, description="the task's size; must match the model's")
    n_examples: int = Field(default=200, ge=1, le=MAX_EXAMPLES)
    seed: int | None = None  # when given, replaces the run's seed for this benchmark


class SynthTaskBenchmark(Benchmark):
    """A synthetic task as a benchmark (``synth-<task>``), the ground truth in ``Example.meta``.

    ``meta`` holds ``tokens`` (``<bos>`` + prompt + target, one per symbol), ``variables`` (one dict
    per token), ``index_keys``, ``facts`` and ``counterfactuals`` (:meth:`SynthCounterfactual.record`).
    Problems of a split come in a fixed order given the seed; a shorter run is a prefix of a longer
    one. The answer has a fixed number of tokens, so there is no delimiter.
    """

    splits = ("test", "train")
    multiple_choice = False
    Options = SynthOptions

    def __init__(self, task: SynthTask, name: str | None = None) -> None:
        self.task = task
        self.name = name or f"synth-{task.name}"
        self.description = (
            f"Synthetic task {task.name!r} ({task.size_name}, default {task.default_size}) with per-token "
            "ground-truth variables and counterfactuals; for models `scircuits synth train` makes"
        )

    def sized_task(self, options: Mapping[str, Any] | BaseModel | None = None) -> SynthTask:
        opts: SynthOptions = self.parse_options(options)  # type: ignore[assignment]
        try:
            return self.task.sized(opts.size)
        except ValueError as exc:
            raise ConfigError(f"benchmark {self.name!r}: {exc}") from None

    def examples(
        self,
        split: str = "test",
        limit: int | None = None,
        seed: int = 0,
        options: Mapping[str, Any] | BaseModel | None = None,
    ) -> Iterator[Example]:
        self.check_split(split)
        opts: SynthOptions = self.parse_options(options)  # type: ignore[assignment]
        task = self.sized_task(opts)
        count = opts.n_examples if limit is None else limit
        if not 1 <= count <= MAX_EXAMPLES:
            raise ConfigError(f"benchmark {self.name!r}: limit must be 1..{MAX_EXAMPLES:,}, got {count}")
        return self._generate(task, split, opts.seed if opts.seed is not None else seed, count)

    def _generate(self, task: SynthTask, split: str, seed: int, count: int) -> Iterator[Example]:
        problems = task.problems(split, seed)
        for index in range(count):
            try:
                problem = next(problems)
            except ExhaustedError as exc:
                raise ConfigError(
                    f"benchmark {self.name!r}: {exc}; ask for fewer (limit or n_examples)"
                ) from None
            yield problem_example(task, problem, f"{self.name}/{split}/{index}", seed)

    def counterfactual_pairs(
        self,
        split: str = "test",
        limit: int | None = None,
        seed: int = 0,
        options: Mapping[str, Any] | BaseModel | None = None,
    ) -> Iterator[tuple[Example, Example, dict[str, Any]]]:
        """(original, counterfactual, record) for every declared counterfactual of each example."""
        for example in self.examples(split, limit, seed, options):
            for i, record in enumerate(example.meta["counterfactuals"]):
                yield (
                    example,
                    Example(
                        id=f"{example.id}/cf/{record['variable']}",
                        prompt=record["prompt"],
                        target=record["target"],
                        meta={"original": example.id, "counterfactual_index": i, "task": self.task.name},
                    ),
                    record,
                )

    def facts(self) -> dict[str, Any]:
        return {**super().facts(), "task": self.task.name, "default_size": self.task.default_size}


def problem_example(task: SynthTask, problem: SynthProblem, example_id: str, seed: int) -> Example:
    return Example(
        id=example_id,
        prompt=problem.prompt,
        target=problem.target,
        meta={
            "task": task.name,
            "size": task.size,
            "key": problem.key,
            "seed": seed,
            "tokens": list(problem.tokens),
            "answer_start": problem.answer_start,
            "variables": [dict(v) for v in problem.variables],
            "index_keys": sorted(task.index_keys),
            "facts": problem.facts,
            "counterfactuals": [cf.record() for cf in task.counterfactuals(problem)],
        },
    )
