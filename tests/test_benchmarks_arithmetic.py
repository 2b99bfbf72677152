"""The generated arithmetic benchmark: correct targets, determinism, prefix-stable order, disjoint splits."""

from __future__ import annotations

import re

import pytest

from scircuits.platform.contract.errors import ConfigError
from scircuits.plugins.benchmarks.arithmetic import ArithmeticBenchmark, split_of

EQUATION = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)")
QUESTION = re.compile(r"(\d+) ([-+*]) (\d+) =")


def compute(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def parse(example) -> tuple[list[tuple[int, str, int, int]], tuple[int, str, int]]:
    """(solved shots, the question) read back from the prompt text."""
    *shot_lines, question_line = example.prompt.split("\n")
    shots = []
    for line in shot_lines:
        match = EQUATION.fullmatch(line)
        assert match, f"shot line {line!r} is not 'a op b = c'"
        shots.append((int(match[1]), match[2], int(match[3]), int(match[4])))
    match = QUESTION.fullmatch(question_line)
    assert match, f"question line {question_line!r} is not 'a op b ='"
    return shots, (int(match[1]), match[2], int(match[3]))


@pytest.fixture(scope="module")
def bench() -> ArithmeticBenchmark:
    return ArithmeticBenchmark()


def test_default_examples_are_three_shot_two_digit_additions(bench):
    examples = list(bench.examples())
    assert len(examples) == 200
    assert [e.id for e in examples[:3]] == ["arithmetic/test/0", "arithmetic/test/1", "arithmetic/test/2"]
    for example in examples:
        shots, (a, op, b) = parse(example)
        assert len(shots) == 3 and op == "+"
        assert 10 <= a <= 99 and 10 <= b <= 99
        assert example.target == f" {a + b}"
        assert example.choices is None and example.answer_index is None
        assert example.meta["answer"] == a + b


def test_the_line_separator_ends_every_answer_and_answers_in_shots_are_marked(bench):
    examples = list(bench.examples(limit=200))
    for example in examples:
        assert example.delimiter == "\n"
        # a shot is "a + b = c" followed by the separator: the scored answer is written the same way
        assert (example.prompt + example.target + example.delimiter).count("\n") == 4
        shots, _ = parse(example)
        numbers = {str(n) for shot in shots for n in (shot[0], shot[2], shot[3])} | {
            m for m in re.findall(r"\d+", example.prompt.split("\n")[-1])
        }
        assert example.meta["answer_in_prompt"] == (example.target.strip() in numbers), example.id
    assert 0 < sum(e.meta["answer_in_prompt"] for e in examples) < len(examples)


@pytest.mark.parametrize("operations", [["+"], ["-"], ["*"], ["+", "-", "*"]])
def test_targets_and_shots_recompute(bench, operations):
    examples = list(bench.examples("test", options={"operations": operations, "n_examples": 60, "digits": 2}))
    seen_ops = set()
    for example in examples:
        shots, (a, op, b) = parse(example)
        seen_ops.add(op)
        assert op in operations
        assert example.target == f" {compute(a, op, b)}"
        assert compute(a, op, b) >= 0  # subtraction puts the larger operand first
        for shot_a, shot_op, shot_b, shot_answer in shots:
            assert shot_op == op, "shots use the question's operation"
            assert shot_answer == compute(shot_a, shot_op, shot_b)
            assert (shot_a, shot_op, shot_b) != (a, op, b)
    assert seen_ops == set(operations)


@pytest.mark.parametrize("digits", [1, 3])
def test_operands_have_the_requested_digits(bench, digits):
    options = {"digits": digits, "n_examples": 15, "n_shots": 2}
    for example in bench.examples("test", options=options):
        shots, (a, _, b) = parse(example)
        low = 0 if digits == 1 else 10 ** (digits - 1)
        for value in [a, b] + [x for shot in shots for x in (shot[0], shot[2])]:
            assert low <= value < 10**digits


def test_same_arguments_give_the_same_examples(bench):
    assert list(bench.examples("test", seed=3)) == list(bench.examples("test", seed=3))
    assert list(bench.examples("test", seed=3)) != list(bench.examples("test", seed=4))


def test_seed_option_replaces_the_run_seed(bench):
    assert list(bench.examples(seed=0, options={"seed": 7})) == list(bench.examples(seed=7))


def test_limit_is_a_prefix_of_a_larger_limit(bench):
    full = list(bench.examples("train", seed=1))
    assert list(bench.examples("train", limit=10, seed=1)) == full[:10]
    assert list(bench.examples("train", limit=50, seed=1)) == full[:50]
    assert list(bench.examples("train", limit=0, seed=1)) == []


def test_more_examples_extend_fewer(bench):
    few = list(bench.examples(options={"n_examples": 20}))
    many = list(bench.examples(options={"n_examples": 80}))
    assert many[:20] == few
    assert list(bench.examples(limit=20, options={"n_examples": 80})) == few


def test_a_limit_beyond_n_examples_continues_the_same_sequence(bench):
    default = list(bench.examples())
    longer = list(bench.examples(limit=260))
    assert len(default) == 200 and len(longer) == 260
    assert longer[:200] == default
    assert len({e.prompt.rsplit("\n", 1)[1] for e in longer}) == 260, "still distinct problems"


def test_train_and_test_problems_are_disjoint_whatever_the_seeds(bench):
    def problems(split, seed):
        return {parse(e)[1] for e in bench.examples(split, seed=seed, options={"n_examples": 400})}

    test = problems("test", 0)
    assert len(test) == 400, "problems within a split are distinct"
    assert test.isdisjoint(problems("train", 0))
    assert test.isdisjoint(problems("train", 1))


def test_shots_never_contain_a_test_problem(bench):
    for example in bench.examples("test"):
        for a, op, b, _ in parse(example)[0]:
            assert split_of((op, a, b)) == "train"


def test_shots_vary_between_examples(bench):
    prefixes = {e.prompt.rsplit("\n", 1)[0] for e in bench.examples(limit=50)}
    assert len(prefixes) == 50


def test_zero_shots_gives_the_question_alone(bench):
    example = next(bench.examples(options={"n_shots": 0}))
    assert QUESTION.fullmatch(example.prompt)


def test_operations_accept_a_comma_separated_string(bench):
    options = bench.parse_options({"operations": "+,*"})
    assert options.operations == ["+", "*"]


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"operations": ["/"]}, "operations"),
        ({"operations": ["+", "+"]}, "operations repeat"),
        ({"operations": []}, "operations"),
        ({"digits": 0}, "digits"),
        ({"n_examples": 0}, "n_examples"),
    ],
)
def test_invalid_options_are_config_errors(bench, options, fragment):
    with pytest.raises(ConfigError, match=fragment):
        bench.examples(options=options)


def test_asking_for_more_problems_than_exist_names_the_count(bench):
    with pytest.raises(
        ConfigError,
        match=r"only \d+ distinct test problems exist .* ask for fewer \(n_examples or limit, now 200\)",
    ):
        bench.examples(options={"digits": 1})  # 200 wanted, about 20 one-digit test additions exist
    with pytest.raises(ConfigError, match=r"only \d+ distinct test problems exist .*now 50\)"):
        bench.examples(limit=50, options={"digits": 1, "n_examples": 5})
    assert len(list(bench.examples(limit=3, options={"digits": 1, "n_examples": 5}))) == 3


def test_negative_or_huge_limits_are_config_errors(bench):
    with pytest.raises(ConfigError, match="limit must be a whole number >= 0"):
        bench.examples(limit=-2)
    with pytest.raises(ConfigError, match="at most 100,000 examples"):
        bench.examples(limit=100_001)


def test_unknown_split_lists_the_splits(bench):
    with pytest.raises(ConfigError, match="no split 'dev'; its splits: test, train"):
        bench.examples("dev")
