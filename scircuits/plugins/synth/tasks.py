"""Synthetic tasks with known intermediate variables at known token positions (pure Python).

Every problem is a fixed-length sequence of whitespace-separated symbols. The sequence the pipeline
traces is ``<bos>`` + prompt + answer (``scircuits`` encodes prompt tokens with the tokenizer's
special tokens, then the target without), so ``Problem.variables[p]`` describes token ``p`` of that
sequence, position 0 being ``<bos>``.

``addition`` (digits = n): every number is written **least significant digit first**:
``a_0 .. a_{n-1} + b_0 .. b_{n-1} =`` then the sum's n + 1 digits (the last one is the final carry).
Operands are zero-padded to n digits, so a column's digits sit at the same distance from the
answer digit they make whatever the column (relative positions are all a rotary model sees).
The logits at the position before answer digit i predict it; that position carries the variables
of column i: ``sum_digit`` (s_i), ``carry_in`` (c_i) and ``carry_out`` (c_{i+1}), where
s_i = (a_i + b_i + c_i) mod 10 and c_{i+1} = (a_i + b_i + c_i) >= 10, and the column's operand digits
``a_digit`` (a_i) and ``b_digit`` (b_i), which the position must gather from the prompt. Example (n = 3)::

    prompt "7 5 4 + 8 6 1 ="   target " 5 2 6 0"   (457 + 168 = 625)

``logic`` (steps = n): a chain of n assignments to distinct variables, each but the first reading
the previous one through ``is`` (copy) or ``not`` (negate), then a query::

    prompt "c = 1 ; a = not c ; f = is a ; ? a"   target " 0"

The ``;`` closing step k carries ``value`` (the value of the variable assigned at step k),
``negated`` (whether step k negates) and ``step``; the query's last token carries ``answer`` and
``query_step``. Every statement has a fixed length, so a counterfactual never shifts a position.

Splits. A problem belongs to "test" or "train" by a fixed hash of its canonical key (a fifth are
test), whatever the seed: training never sees a held-out problem.
"""

from __future__ import annotations

import random

from scircuits import SynthCounterfactual as Counterfactual
from scircuits import SynthProblem as Problem
from scircuits import SynthTask

LOGIC_NAMES = tuple("abcdefgh")


# -- addition ---------------------------------------------------------------------------------------


def addition_problem(a: int, b: int, digits: int) -> Problem:
    if not (0 <= a < 10**digits and 0 <= b < 10**digits):
        raise ValueError(f"operands {a}, {b} do not fit in {digits} digits")
    a_digits = [(a // 10**i) % 10 for i in range(digits)]  # least significant first
    b_digits = [(b // 10**i) % 10 for i in range(digits)]
    prompt = (
        *[str(d) for d in a_digits],
        "+",
        *[str(d) for d in b_digits],
        "=",
    )
    carries = [0]  # carries[i] = carry into column i
    sums: list[int] = []
    for i in range(digits):
        total = a_digits[i] + b_digits[i] + carries[i]
        sums.append(total % 10)
        carries.append(int(total >= 10))
    sums.append(carries[digits])
    answer = tuple(str(d) for d in sums)
    n_tokens = 1 + len(prompt) + len(answer)
    variables: list[dict[str, int]] = [{} for _ in range(n_tokens)]
    first = 1 + len(prompt) - 1  # the "=" predicts answer digit 0
    for i in range(digits + 1):
        cell = {"column": i, "sum_digit": sums[i]}
        if i:  # column 0 never receives a carry: a constant there is no variable, only a position
            cell["carry_in"] = carries[i]
        if i < digits:
            cell.update(carry_out=carries[i + 1], a_digit=a_digits[i], b_digit=b_digits[i])
        variables[first + i] = cell
    return Problem(
        task="addition",
        key=f"add{digits}:{a}+{b}",
        prompt_tokens=prompt,
        answer_tokens=answer,
        variables=tuple(variables),
        facts={"a": a, "b": b, "sum": a + b, "digits": digits, "carries": carries},
    )


def addition_counterfactual(problem: Problem, column: int) -> Counterfactual:
    """Flip the carry into ``column`` (1..digits) by changing b's digit in column - 1.

    The new digit is the nearest one (to b's old digit) that flips that column's carry-out; the
    other columns' digits are unchanged, so a change in a later column's answer comes from the carry
    (the answer digit of column - 1 changes too).
    """
    digits = problem.facts["digits"]
    if not 1 <= column <= digits:
        raise ValueError(f"column {column} has no carry in: use 1..{digits}")
    a, b = problem.facts["a"], problem.facts["b"]
    carries = problem.facts["carries"]
    j = column - 1
    a_j, b_j = (a // 10**j) % 10, (b // 10**j) % 10
    want = 1 - carries[column]
    candidates = sorted(range(10), key=lambda d: (abs(d - b_j), d))
    for d in candidates:
        if int(a_j + d + carries[j] >= 10) == want:
            new_b = b + (d - b_j) * 10**j
            # only a problem whose carry arrives (is 1) depends on what represents "a carry arrives"
            return Counterfactual.between(
                problem,
                addition_problem(a, new_b, digits),
                f"carry_in@{column}",
                _column_position(problem, column),
                depends=bool(carries[column]),
            )
    raise ValueError(f"no digit flips the carry into column {column} of {problem.key} (a digit {a_j} = 9?)")


def _column_position(problem: Problem, column: int) -> int:
    return next(p for p, cell in enumerate(problem.variables) if cell.get("column") == column)


# -- logic ------------------------------------------------------------------------------------------


def logic_problem(
    names: tuple[str, ...], first_value: int, negations: tuple[bool, ...], query: int
) -> Problem:
    """Step 0: ``names[0] = first_value``; step k: ``names[k] = (not|is) names[k-1]``; query names[query]."""
    n = len(names)
    if len(set(names)) != n or len(negations) != n - 1 or not 0 <= query < n or first_value not in (0, 1):
        raise ValueError(f"invalid logic problem: names={names} negations={negations} query={query}")
    values = [first_value]
    for k in range(1, n):
        values.append(values[-1] ^ int(negations[k - 1]))
    prompt: list[str] = [names[0], "=", str(first_value), ";"]
    closing = [len(prompt)]  # index in the prompt of each step's ";"
    for k in range(1, n):
        prompt += [names[k], "=", "not" if negations[k - 1] else "is", names[k - 1], ";"]
        closing.append(len(prompt))
    prompt += ["?", names[query]]
    answer = (str(values[query]),)
    variables: list[dict[str, int]] = [{} for _ in range(1 + len(prompt) + 1)]
    for k in range(n):
        variables[1 + closing[k] - 1] = {
            "step": k,
            "value": values[k],
            "negated": int(negations[k - 1]) if k else 0,
        }
    variables[1 + len(prompt) - 1] = {"answer": values[query], "query_step": query}
    key = f"logic{n}:{''.join(names)}:{first_value}:{''.join('n' if x else 'i' for x in negations)}:{query}"
    return Problem(
        task="logic",
        key=key,
        prompt_tokens=tuple(prompt),
        answer_tokens=answer,
        variables=tuple(variables),
        facts={
            "names": list(names),
            "first_value": first_value,
            "negations": [int(x) for x in negations],
            "values": values,
            "query": query,
            "steps": n,
        },
    )


def logic_counterfactual(problem: Problem, step: int) -> Counterfactual:
    """Flip the value assigned at ``step``: the constant at step 0, else ``is`` <-> ``not``.

    Every later value flips too; the answer changes exactly when the query reads step >= ``step``.
    """
    f = problem.facts
    if not 0 <= step < f["steps"]:
        raise ValueError(f"step {step} is out of range 0..{f['steps'] - 1}")
    negations = [bool(x) for x in f["negations"]]
    first = f["first_value"]
    if step == 0:
        first = 1 - first
    else:
        negations[step - 1] = not negations[step - 1]
    other = logic_problem(tuple(f["names"]), first, tuple(negations), f["query"])
    position = next(p for p, cell in enumerate(problem.variables) if cell.get("step") == step)
    return Counterfactual.between(problem, other, f"value@{step}", position)


# -- the registered tasks ---------------------------------------------------------------------------


class AdditionTask(SynthTask):
    name = "addition"
    default = True  # the family's default (docs/plugins.md, "Defaults")
    description = "n-digit addition, least significant digit first; carries and sum digits per column"
    size_name = "digits"
    default_size, min_size, max_size = 4, 1, 9
    index_keys = frozenset({"column"})

    def symbols(self) -> list[str]:
        return [*(str(d) for d in range(10)), "+", "="]

    def draw(self, rng: random.Random) -> Problem:
        return addition_problem(rng.randrange(10**self.size), rng.randrange(10**self.size), self.size)

    def counterfactuals(self, problem: Problem) -> list[Counterfactual]:
        out = []
        for column in range(1, self.size + 1):
            try:
                out.append(addition_counterfactual(problem, column))
            except ValueError:  # no digit of b flips that carry
                continue
        return out


class LogicTask(SynthTask):
    name = "logic"
    description = "a chain of is/not assignments and a query; each step's value at its ';'"
    size_name = "steps"
    default_size, min_size, max_size = 3, 2, len(LOGIC_NAMES)
    index_keys = frozenset({"step"})

    def symbols(self) -> list[str]:
        return ["0", "1", "=", ";", "?", "is", "not", *LOGIC_NAMES]

    def draw(self, rng: random.Random) -> Problem:
        names = tuple(rng.sample(LOGIC_NAMES, self.size))
        negations = tuple(rng.random() < 0.5 for _ in range(self.size - 1))
        return logic_problem(names, rng.randrange(2), negations, rng.randrange(self.size))

    def counterfactuals(self, problem: Problem) -> list[Counterfactual]:
        return [logic_counterfactual(problem, step) for step in range(self.size)]


BUILTIN_TASKS: tuple[type[SynthTask], ...] = (AdditionTask, LogicTask)
