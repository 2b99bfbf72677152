"""``arithmetic``: generated few-shot arithmetic problems, offline and seeded (the embedded default).

An example (3 shots, addition, 2 digits)::

    prompt: "34 + 51 = 85\\n27 + 60 = 87\\n13 + 92 = 105\\n45 + 38 ="
    target: " 83"     delimiter: "\\n"

The target has a leading space so that prompt + target tokenises like the natural text. Shots are
separated by "\\n", so "\\n" follows an answer and is scored with it: " 83" followed by "0" is
wrong. meta["answer_in_prompt"]: the answer occurs as a number in the prompt (in a shot).

Problems. Operands have exactly ``digits`` digits (0-9 for one digit). Subtraction puts the larger
operand first, so every answer is a whole number >= 0. Each problem (operation, a, b) belongs to the
"test" split or the "train" split by a fixed hash of the problem (a fifth are test), whatever the
seed, so the two splits never share a problem.

Order. The split's problems are drawn one after the other from a generator seeded by (split, seed),
an endless sequence of distinct problems: ``n_examples`` (default 200) is how many are given when no
``limit`` is; a ``limit`` takes the first ``limit`` of the same sequence, even beyond ``n_examples``
(so collecting activations from 5,000 problems is ``limit=5000``). A shorter run is always a prefix
of a longer one.

Shots. Every example has its own ``n_shots`` solved problems of the same operation, drawn from the
train split (never the example's own problem) by a generator seeded by (split, seed, example index),
so test answers never appear in any prompt and prompts do not share one repeated prefix.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from scircuits import Benchmark, ConfigError, Example

from .answers import occurs_in
from .datafiles import check_limit

Operation = Literal["+", "-", "*"]
Problem = tuple[str, int, int]  # (operation, a, b)

TEST_FRACTION_DENOMINATOR = 5  # one problem in five is a test problem
ENUMERATE_UP_TO = 200_000  # problem spaces this small are counted exactly before sampling
MAX_EXAMPLES = 100_000
SEPARATOR = "\n"  # between shots, so it ends every answer


class ArithmeticOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    operations: list[Operation] = Field(default_factory=lambda: ["+"], min_length=1)
    digits: int = Field(default=2, ge=1, le=9)
    n_shots: int = Field(default=3, ge=0, le=32)
    n_examples: int = Field(default=200, ge=1, le=MAX_EXAMPLES)  # the split's size when no limit is given
    seed: int | None = None  # when given, replaces the run's seed for this benchmark

    @field_validator("operations", mode="before")
    @classmethod
    def _split_string(cls, value: Any) -> Any:
        # "+,-" from a command line flag
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("operations")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"operations repeat: {value}")
        return value


def answer_of(problem: Problem) -> int:
    op, a, b = problem
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    return a * b


def split_of(problem: Problem) -> str:
    """ "test" or "train": a fixed function of the problem alone."""
    op, a, b = problem
    digest = hashlib.sha256(f"{op} {a} {b}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") % TEST_FRACTION_DENOMINATOR == 0 else "train"


def render(problem: Problem) -> str:
    op, a, b = problem
    return f"{a} {op} {b} ="


class ProblemSpace:
    """All problems with the given operations and digit count."""

    def __init__(self, operations: list[str], digits: int) -> None:
        self.operations = list(operations)
        self.low = 0 if digits == 1 else 10 ** (digits - 1)
        self.high = 10**digits - 1

    def draw(self, rng: random.Random, operation: str | None = None) -> Problem:
        op = operation if operation is not None else rng.choice(self.operations)
        a = rng.randint(self.low, self.high)
        b = rng.randint(self.low, self.high)
        if op == "-" and b > a:
            a, b = b, a
        return (op, a, b)

    def size(self) -> int:
        n = self.high - self.low + 1
        per_op = {"+": n * n, "*": n * n, "-": n * (n + 1) // 2}
        return sum(per_op[op] for op in self.operations)

    def count_in_split(self, split: str, operation: str | None = None) -> int:
        operations = [operation] if operation is not None else self.operations
        count = 0
        for op in operations:
            for a in range(self.low, self.high + 1):
                for b in range(self.low, (a if op == "-" else self.high) + 1):
                    count += split_of((op, a, b)) == split
        return count


def _sample_distinct(
    space: ProblemSpace,
    rng: random.Random,
    split: str,
    count: int,
    exclude: Problem | None = None,
    operation: str | None = None,
) -> Iterator[Problem]:
    """``count`` distinct problems of ``split``, in draw order (rejection sampling)."""
    seen: set[Problem] = set()
    while len(seen) < count:
        problem = space.draw(rng, operation)
        if problem in seen or problem == exclude or split_of(problem) != split:
            continue
        seen.add(problem)
        yield problem


class ArithmeticBenchmark(Benchmark):
    name = "arithmetic"
    default = True  # the family's default (docs/plugins.md, "Defaults")
    description = "Generated few-shot arithmetic (e.g. '12 + 5 = 17' shots, then 'a + b ='); offline, seeded."
    splits = ("test", "train")
    multiple_choice = False
    Options = ArithmeticOptions

    def examples(
        self,
        split: str = "test",
        limit: int | None = None,
        seed: int = 0,
        options: Mapping[str, Any] | BaseModel | None = None,
    ) -> Iterator[Example]:
        self.check_split(split)
        opts: ArithmeticOptions = self.parse_options(options)  # type: ignore[assignment]
        space = ProblemSpace(opts.operations, opts.digits)
        count = opts.n_examples if limit is None else check_limit(limit)
        self._check_enough_problems(space, split, count, opts)
        used_seed = opts.seed if opts.seed is not None else seed
        return self._generate(space, split, used_seed, count, opts)

    def _check_enough_problems(
        self, space: ProblemSpace, split: str, count: int, opts: ArithmeticOptions
    ) -> None:
        if count > MAX_EXAMPLES:
            raise ConfigError(
                f"benchmark 'arithmetic' generates at most {MAX_EXAMPLES:,} examples, asked for {count:,}"
            )
        if space.size() > ENUMERATE_UP_TO:
            return  # at least 160,000 problems per split: any count up to MAX_EXAMPLES fits
        available = space.count_in_split(split)
        if count > available:
            raise ConfigError(
                f"benchmark 'arithmetic': only {available} distinct {split} problems exist with "
                f"digits={opts.digits} and operations={opts.operations}; ask for fewer (n_examples or "
                f"limit, now {count}) or raise digits"
            )
        if opts.n_shots:
            for op in opts.operations:
                shots_available = space.count_in_split("train", op)
                if opts.n_shots >= shots_available:
                    raise ConfigError(
                        f"benchmark 'arithmetic': only {shots_available} train problems with {op!r} and "
                        f"digits={opts.digits} exist for the shots; lower n_shots (now {opts.n_shots})"
                    )

    def _generate(
        self, space: ProblemSpace, split: str, seed: int, count: int, opts: ArithmeticOptions
    ) -> Iterator[Example]:
        rng = random.Random(f"arithmetic/{split}/{seed}")
        problems = _sample_distinct(space, rng, split, count)
        for index, problem in enumerate(problems):
            shot_rng = random.Random(f"arithmetic/shots/{split}/{seed}/{index}")
            shots = list(
                _sample_distinct(
                    space, shot_rng, "train", opts.n_shots, exclude=problem, operation=problem[0]
                )
            )
            lines = [f"{render(shot)} {answer_of(shot)}" for shot in shots] + [render(problem)]
            op, a, b = problem
            answer = answer_of(problem)
            prompt = SEPARATOR.join(lines)
            yield Example(
                id=f"arithmetic/{split}/{index}",
                prompt=prompt,
                target=f" {answer}",
                delimiter=SEPARATOR,
                meta={
                    "operation": op,
                    "a": a,
                    "b": b,
                    "answer": answer,
                    "shots": [list(shot) for shot in shots],
                    "seed": seed,
                    "answer_in_prompt": occurs_in(str(answer), prompt),
                },
            )
