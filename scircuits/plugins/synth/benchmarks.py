"""``synth-addition`` and ``synth-logic``: the synthetic tasks as benchmarks, with ground truth in ``meta``.

Each ``Example.meta`` holds:

- ``tokens``: the symbols of ``<bos>`` + prompt + target, as the model's tokenizer splits them
  (one token per symbol), so ``variables[p]`` describes the token at position ``p`` of the traced
  sequence;
- ``variables``: one dict per token, the known variables determined there (empty for most tokens);
- ``facts``: the problem's inputs and derived values (operands and carries, or names and values);
- ``counterfactuals``: for each flippable variable (``carry_in@i``, ``value@k``) the same problem
  with that variable flipped by a minimal edit of the input: its prompt and target, the variable's
  position and original value, the answer positions that change, and ``depends``: whether this
  problem's answer depends on the variable (see :func:`answer_depends`).

``counterfactual_pairs`` yields (original, counterfactual) ``Example`` pairs for interchange
experiments.

The examples have no delimiter (``Example.delimiter == ""``): a task's answer has a fixed number of
tokens given its size (the digits of the sum, or one value), so its end needs no check, and the models
never see a token after it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from scircuits import Benchmark, Example

from .tasks import TASKS, Counterfactual, ExhaustedError, Problem, TaskSpec, task_spec

MAX_EXAMPLES = 100_000


def answer_depends(cf: Counterfactual) -> bool:
    """Whether the original problem's answer depends on the flipped variable.

    Logic: the answer changes when the value is flipped (the query reads that step or a later one).
    Addition: the carry into a column is *used* (it is 1). Flipping a carry always changes some
    answer digit, but ablating what represents "a carry arrives here" can only change problems in
    which a carry arrives; problems without that carry do not depend on it.
    """
    if cf.original.task == "addition":
        column = int(cf.variable.split("@")[1])
        return bool(cf.original.facts["carries"][column])
    return bool(cf.changed_answer_positions)


def _counterfactual_record(cf: Counterfactual) -> dict[str, Any]:
    name = cf.variable.split("@")[0]
    return {
        "variable": cf.variable,
        "position": cf.position,
        "value": cf.original.variables[cf.position]["carry_in" if name == "carry_in" else "value"],
        "prompt": cf.counterfactual.prompt,
        "target": cf.counterfactual.target,
        "changed_answer_positions": list(cf.changed_answer_positions),
        "depends": answer_depends(cf),
    }


def problem_example(spec: TaskSpec, problem: Problem, example_id: str, seed: int) -> Example:
    return Example(
        id=example_id,
        prompt=problem.prompt,
        target=problem.target,
        meta={
            "task": spec.name,
            "size": spec.size,
            "key": problem.key,
            "seed": seed,
            "tokens": list(problem.tokens),
            "answer_start": problem.answer_start,
            "variables": [dict(v) for v in problem.variables],
            "facts": problem.facts,
            "counterfactuals": [_counterfactual_record(cf) for cf in spec.counterfactuals(problem)],
        },
    )


class SynthOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int | None = Field(
        default=None, description="digits (addition) or steps (logic); must match the model"
    )
    n_examples: int = Field(default=200, ge=1, le=MAX_EXAMPLES)
    seed: int | None = None  # when given, replaces the run's seed for this benchmark


class SynthBenchmark(Benchmark):
    """One synthetic task. Problems of a split come in a fixed order given the seed; a shorter run
    is a prefix of a longer one."""

    splits = ("test", "train")
    multiple_choice = False
    Options = SynthOptions

    def __init__(self, task: str) -> None:
        self.task = task
        self.name = f"synth-{task}"
        default = TASKS[task]["default"]
        what = "digits, least significant first" if task == "addition" else "steps"
        self.description = (
            f"Synthetic {task} ({what}, default {default}) with per-token ground-truth variables and "
            "counterfactual pairs; for the models `scircuits synth train` makes."
        )

    def spec(self, options: Mapping[str, Any] | BaseModel | None = None) -> TaskSpec:
        from ._internal import UserError

        opts: SynthOptions = self.parse_options(options)  # type: ignore[assignment]
        try:
            return task_spec(self.task, opts.size)
        except ValueError as exc:
            raise UserError(f"benchmark {self.name!r}: {exc}") from None

    def examples(
        self,
        split: str = "test",
        limit: int | None = None,
        seed: int = 0,
        options: Mapping[str, Any] | BaseModel | None = None,
    ) -> Iterator[Example]:
        from ._internal import UserError

        self.check_split(split)
        opts: SynthOptions = self.parse_options(options)  # type: ignore[assignment]
        spec = self.spec(opts)
        count = opts.n_examples if limit is None else limit
        if not 1 <= count <= MAX_EXAMPLES:
            raise UserError(f"benchmark {self.name!r}: limit must be 1..{MAX_EXAMPLES:,}, got {count}")
        used_seed = opts.seed if opts.seed is not None else seed
        return self._generate(spec, split, used_seed, count)

    def _generate(self, spec: TaskSpec, split: str, seed: int, count: int) -> Iterator[Example]:
        from ._internal import UserError

        problems = spec.problems(split, seed)
        for index in range(count):
            try:
                problem = next(problems)
            except ExhaustedError as exc:
                raise UserError(
                    f"benchmark {self.name!r}: {exc}; ask for fewer (limit or n_examples)"
                ) from None
            yield problem_example(spec, problem, f"{self.name}/{split}/{index}", seed)

    def counterfactual_pairs(
        self,
        split: str = "test",
        limit: int | None = None,
        seed: int = 0,
        options: Mapping[str, Any] | BaseModel | None = None,
    ) -> Iterator[tuple[Example, Example, dict[str, Any]]]:
        """(original, counterfactual, record) for every flippable variable of each example."""
        for example in self.examples(split, limit, seed, options):
            for i, record in enumerate(example.meta["counterfactuals"]):
                spec = task_spec(example.meta["task"], example.meta["size"])
                yield (
                    example,
                    Example(
                        id=f"{example.id}/cf/{record['variable']}",
                        prompt=record["prompt"],
                        target=record["target"],
                        meta={"original": example.id, "counterfactual_index": i, "task": spec.name},
                    ),
                    record,
                )

    def facts(self) -> dict[str, Any]:
        return {**super().facts(), "task": self.task, "default_size": TASKS[self.task]["default"]}
