"""MATH loader and \\boxed{} extraction: real files (committed first rows; the full files when
present), nested braces, filters, malformed input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from scircuits.platform.contract.errors import ConfigError, DataFormatError
from scircuits.plugins.benchmarks.boxed import UnbalancedBoxError, last_boxed
from scircuits.plugins.benchmarks.competition_math import MATH_TYPES, MathBenchmark


@pytest.fixture(scope="module")
def bench() -> MathBenchmark:
    return MathBenchmark()


@pytest.fixture(scope="module")
def math_dir(bench_data) -> str:
    """The first 40 rows of the real test.jsonl and math500.jsonl."""
    return str(bench_data / "math")


@pytest.fixture(scope="module")
def full_math_dir(shared_data) -> str:
    return str(shared_data / "math")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


GOOD_ROW = {
    "problem": "1/2 + 0?",
    "level": "Level 1",
    "type": "Algebra",
    "solution": "It is $\\boxed{\\frac12}$.",
}


@pytest.mark.parametrize(
    "text, content",
    [
        ("so $\\boxed{2}$.", "2"),
        ("$\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}"),
        ("$\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("first \\boxed{1}, then \\boxed{\\sqrt{2}}.", "\\sqrt{2}"),
        ("\\fbox{x^{2}}", "x^{2}"),
        ("\\boxed {7}", "7"),
        ("$\\boxed{\\{1, 2\\}}$", "\\{1, 2\\}"),  # escaped braces do not nest
        ("\\boxed{a}{b}", "a"),
        ("\\boxed{\\text{(C)}}\\\\ next", "\\text{(C)}"),
    ],
)
def test_last_boxed_extracts_nested_content(text, content):
    box = last_boxed(text)
    assert box is not None and box.content == content
    assert text[box.start : box.end] == content and text[box.end] == "}"


def test_last_boxed_without_a_box_is_none():
    assert last_boxed("the answer is 4") is None


def test_last_boxed_unbalanced_raises():
    with pytest.raises(UnbalancedBoxError, match="never closed"):
        last_boxed("\\boxed{\\frac{1}{2}")


@pytest.mark.parametrize("split, rows", [("test", 5000), ("math500", 500)])
def test_row_counts(bench, full_math_dir, split, rows):
    assert sum(1 for _ in bench.examples(split, options={"data": full_math_dir})) == rows


@pytest.mark.parametrize("split", ["test", "math500"])
def test_fixture_rows_are_all_read(bench, math_dir, split):
    assert sum(1 for _ in bench.examples(split, options={"data": math_dir})) == 40


def test_first_test_example(bench, math_dir):
    example = next(bench.examples("test", options={"data": math_dir, "cot": "gold"}))
    assert example.id == "math/test/0"
    assert example.prompt.startswith(
        "Problem: How many vertical asymptotes does the graph of $y=\\frac{2}{x^2+x-6}$ have?\n"
        "Solution: The denominator of the rational function factors into"
    )
    assert example.prompt.endswith("Therefore, the graph has $\\boxed{")
    assert example.target == "2"
    assert example.delimiter == "}$"  # "Therefore, the graph has $\\boxed{2}$ vertical asymptotes."
    assert example.meta["level"] == 3 and example.meta["type"] == "Algebra" and example.meta["line"] == 1
    assert example.meta["prompt_mode"] == "gold"


def test_math500_targets_equal_its_published_answers(bench, full_math_dir):
    rows = [json.loads(line) for line in (Path(full_math_dir) / "math500.jsonl").read_text().splitlines()]
    examples = list(bench.examples("math500", options={"data": full_math_dir}))
    assert [e.target for e in examples] == [row["answer"] for row in rows]
    assert sum("{" in e.target for e in examples) > 50, "the check covers nested braces"
    assert examples[0].meta["type"] == "Precalculus", "math500's 'subject' is read as the type"


def test_math500_fixture_targets_equal_its_published_answers(bench, math_dir):
    rows = [json.loads(line) for line in (Path(math_dir) / "math500.jsonl").read_text().splitlines()]
    examples = list(bench.examples("math500", options={"data": math_dir}))
    assert [e.target for e in examples] == [row["answer"] for row in rows]
    assert sum("{" in e.target for e in examples) >= 5, "the check covers nested braces"
    assert examples[0].meta["type"] == "Precalculus", "math500's 'subject' is read as the type"


def test_gold_prompt_plus_target_is_the_solution_up_to_the_box(bench, math_dir):
    rows = [json.loads(line) for line in (Path(math_dir) / "test.jsonl").read_text().splitlines()]
    examples = list(bench.examples("test", options={"data": math_dir, "cot": "gold"}))
    assert len(examples) == len(rows)
    for row, example in zip(rows, examples, strict=True):
        solution = example.prompt.split("\nSolution: ", 1)[1] + example.target + example.delimiter
        assert row["solution"].startswith(solution)


def test_cot_none_prompt_is_the_default(bench, math_dir):
    example = next(bench.examples("test", options={"data": math_dir, "cot": "none"}))
    assert example.prompt == (
        "Problem: How many vertical asymptotes does the graph of $y=\\frac{2}{x^2+x-6}$ have?\n"
        "Answer: $\\boxed{"
    )
    assert example.target == "2" and example.delimiter == "}$"  # closes the box and the "$" before it
    assert next(bench.examples("test", options={"data": math_dir})) == example
    assert example.meta["prompt_mode"] == "none"
    assert bench.label() == "cot-none" and bench.label({"cot": "gold"}) == "cot-gold"


def test_the_gold_delimiter_is_how_the_solution_closes_its_box(bench, tmp_path):
    """ "}$" and "}." are single tokens, so the delimiter takes the character after the "}" with it."""
    solutions = ("So $\\boxed{2}$.", "So $\\boxed{\\frac{1}{2}}.$", "$$\\boxed{x}\n$$", "\\boxed{3}")
    rows = [{"problem": "p", "level": 1, "type": "Algebra", "solution": s} for s in solutions]
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    examples = list(bench.examples("test", options={"data": str(path), "cot": "gold"}))
    assert [e.delimiter for e in examples] == ["}$", "}.", "}", "}"]


def test_answer_in_prompt_is_marked(bench, math_dir):
    """In gold mode the solution often states its answer before boxing it; without it, less often."""
    gold = list(bench.examples("test", options={"data": math_dir, "cot": "gold"}))
    none = list(bench.examples("test", options={"data": math_dir}))
    for example in gold + none:
        if example.meta["answer_in_prompt"]:
            assert example.target.strip() in example.prompt, example.id
    assert sum(e.meta["answer_in_prompt"] for e in gold) > sum(e.meta["answer_in_prompt"] for e in none)


def test_level_and_type_filters_keep_file_row_ids(bench, full_math_dir):
    math_dir = full_math_dir
    rows = [json.loads(line) for line in (Path(math_dir) / "test.jsonl").read_text().splitlines()]
    options = {"data": math_dir, "level": [5], "type": ["Number Theory"]}
    examples = list(bench.examples("test", options=options))
    expected = [
        i for i, row in enumerate(rows) if row["level"] == "Level 5" and row["type"] == "Number Theory"
    ]
    assert [e.id for e in examples] == [f"math/test/{i}" for i in expected]
    assert len(examples) > 0
    assert sum(1 for _ in bench.examples("test", options={"data": math_dir, "level": "4,5"})) == 1214 + 1324


def test_type_filter_is_case_insensitive(bench):
    assert bench.parse_options({"type": "number theory"}).type == ["Number Theory"]


def test_limit_is_a_prefix(bench, math_dir):
    full = list(bench.examples("math500", limit=40, options={"data": math_dir}))
    assert list(bench.examples("math500", limit=15, options={"data": math_dir})) == full[:15]


@pytest.mark.parametrize(
    "options, fragment",
    [({"level": [6]}, "levels are 1 to 5"), ({"type": ["Calculus"]}, "unknown type .*MATH types: Algebra")],
)
def test_invalid_filters_are_config_errors(bench, math_dir, options, fragment):
    with pytest.raises(ConfigError, match=fragment):
        bench.examples(options={"data": math_dir, **options})


def test_every_math_type_is_in_the_real_file(bench, full_math_dir):
    types = {e.meta["type"] for e in bench.examples("test", options={"data": full_math_dir})}
    assert types == set(MATH_TYPES)


def test_without_data_or_a_cached_hub_dataset_the_error_names_both(bench):
    # conftest: HF_DATASETS_OFFLINE=1 and an empty cache
    with pytest.raises(
        ConfigError, match=r"benchmark 'math': .*DigitalLearningGmbH/MATH-lighteval.*--data PATH"
    ):
        bench.examples()


@pytest.mark.parametrize(
    "bad_row, expected",
    [
        (
            {**GOOD_ROW, "solution": "It is 1/2."},
            r"expected the 'solution' to give its answer in \\boxed\{\.\.\.\}.*found none",
        ),
        ({**GOOD_ROW, "solution": "$\\boxed{}$"}, r"expected the 'solution' .*found an empty box"),
        (
            {**GOOD_ROW, "solution": "$\\boxed{\\frac{1}{2}$"},
            r"expected the solution's last \\boxed\{\.\.\.\} to close",
        ),
        ({**GOOD_ROW, "level": "hard"}, r"expected 'level' like \"Level 3\" or 3, got 'hard'"),
        ({k: v for k, v in GOOD_ROW.items() if k != "level"}, r"expected the field 'level'"),
        ({k: v for k, v in GOOD_ROW.items() if k != "problem"}, r"expected the field 'problem'"),
        ("not json", r"expected one JSON object per line"),
    ],
)
def test_malformed_rows_name_file_line_and_expectation(bench, tmp_path, bad_row, expected):
    path = write_jsonl(tmp_path / "test.jsonl", [GOOD_ROW, GOOD_ROW, bad_row])
    with pytest.raises(DataFormatError, match=re.escape(f"{path}, line 3: ") + expected):
        list(bench.examples("test", options={"data": str(path)}))


def test_unknown_level_is_kept_as_none(bench, tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", [{**GOOD_ROW, "level": "Level ?"}, {**GOOD_ROW, "level": 2}])
    examples = list(bench.examples("test", options={"data": str(path)}))
    assert [e.meta["level"] for e in examples] == [None, 2]
    assert [e.target for e in examples] == ["\\frac12", "\\frac12"]
