"""Synthetic tasks: known variables at known positions, splits, determinism, counterfactuals."""

from __future__ import annotations

import itertools
import random

import pytest

from scircuits.plugins.synth.tasks import (
    AdditionTask,
    LogicTask,
    addition_counterfactual,
    addition_problem,
    logic_counterfactual,
    logic_problem,
)

TASKS = {"addition": AdditionTask, "logic": LogicTask}


def test_addition_variables_sit_where_each_answer_digit_is_predicted():
    p = addition_problem(457, 168, 3)
    assert p.prompt == "7 5 4 + 8 6 1 ="  # least significant digit first
    assert p.target == " 5 2 6 0"  # 625, least significant digit first, then the final carry
    assert p.tokens[p.answer_start - 1] == "="
    columns = [cell for cell in p.variables if cell]
    assert [c["column"] for c in columns] == [0, 1, 2, 3]
    assert [c.get("carry_in") for c in columns] == [None, 1, 1, 0]  # column 0 receives no carry
    assert [c.get("carry_out") for c in columns] == [1, 1, 0, None]
    # each cell sits on the token whose logits predict that column's digit
    for pos, cell in enumerate(p.variables):
        if cell:
            assert p.tokens[pos + 1] == str(cell["sum_digit"])


@pytest.mark.parametrize("seed", range(20))
def test_addition_digits_and_carries_reconstruct_the_sum(seed):
    rng = random.Random(seed)
    a, b = rng.randrange(10_000), rng.randrange(10_000)
    p = addition_problem(a, b, 4)
    digits = [int(t) for t in p.answer_tokens]
    assert sum(d * 10**i for i, d in enumerate(digits)) == a + b
    for cell in (c for c in p.variables if c and "carry_out" in c):
        i = cell["column"]
        total = (a // 10**i) % 10 + (b // 10**i) % 10 + cell.get("carry_in", 0)
        assert cell["sum_digit"] == total % 10 and cell["carry_out"] == int(total >= 10)
        assert (cell["a_digit"], cell["b_digit"]) == ((a // 10**i) % 10, (b // 10**i) % 10)


def test_addition_counterfactual_flips_exactly_that_carry():
    p = addition_problem(457, 168, 3)
    cf = addition_counterfactual(p, 2)
    assert cf.variable == "carry_in@2"
    assert cf.counterfactual.facts["carries"][2] == 1 - p.facts["carries"][2]
    assert cf.counterfactual.facts["a"] == p.facts["a"]
    assert len(cf.counterfactual.tokens) == len(p.tokens)
    assert p.variables[cf.position]["column"] == 2
    assert cf.changed_answer_positions  # the answer changes


def test_logic_values_follow_the_chain():
    p = logic_problem(("c", "a", "f"), 1, (True, False), query=1)
    assert p.prompt == "c = 1 ; a = not c ; f = is a ; ? a"
    assert p.target == " 0"
    steps = [c for c in p.variables if "step" in c]
    assert [c["value"] for c in steps] == [1, 0, 0]
    assert [p.tokens[pos] for pos, c in enumerate(p.variables) if "step" in c] == [";", ";", ";"]
    query = p.variables[p.answer_start - 1]
    assert query == {"answer": 0, "query_step": 1}


def test_logic_counterfactual_changes_the_answer_only_downstream_of_the_query():
    p = logic_problem(("c", "a", "f", "b"), 0, (True, False, True), query=1)
    for step in range(4):
        cf = logic_counterfactual(p, step)
        assert len(cf.counterfactual.tokens) == len(p.tokens)
        assert bool(cf.changed_answer_positions) == (step <= 1)


@pytest.mark.parametrize("task", ["addition", "logic"])
def test_splits_are_disjoint_and_orders_deterministic(task):
    spec = TASKS[task]()
    test = list(itertools.islice(spec.problems("test", seed=3), 300))
    assert [p.key for p in test] == [p.key for p in itertools.islice(spec.problems("test", seed=3), 300)]
    assert [p.key for p in test] != [p.key for p in itertools.islice(spec.problems("test", seed=4), 300)]
    assert len({p.key for p in test}) == 300
    train = list(itertools.islice(spec.training_problems(seed=0), 2000))
    assert all(p.split == "train" for p in train) and all(p.split == "test" for p in test)
    assert not {p.key for p in train} & {p.key for p in test}
    assert len({len(p.tokens) for p in test + train}) == 1  # fixed positions


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="outside"):
        LogicTask(20)
    with pytest.raises(ValueError, match="outside"):
        AdditionTask().sized(0)


def test_asking_for_more_problems_than_a_split_holds_is_a_clear_error():
    from scircuits import SynthTaskBenchmark
    from scircuits.errors import ScircuitsError

    with pytest.raises(ScircuitsError, match=r"only \d+ distinct test problems exist"):
        list(SynthTaskBenchmark(AdditionTask()).examples(limit=500, options={"size": 1}))
