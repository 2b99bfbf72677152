"""LogiQA (`logic`) loader: real files (committed first blocks; the full files when present),
multiple-choice invariants, label quirks, malformed blocks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scircuits.platform.contract.errors import ConfigError, DataFormatError
from scircuits.plugins.benchmarks.logiqa import LogiQABenchmark

LETTERS = "ABCD"


@pytest.fixture(scope="module")
def bench() -> LogiQABenchmark:
    return LogiQABenchmark()


@pytest.fixture(scope="module")
def logiqa_dir(bench_data) -> str:
    """The first 40 test / 30 eval blocks of the real files."""
    return str(bench_data / "logiqa")


@pytest.fixture(scope="module")
def full_logiqa_dir(shared_data) -> str:
    return str(shared_data / "logiqa")


def block(
    answer: str = "b",
    options: tuple[str, ...] = ("A.one", "B.two", "C.three", "D.four"),
    context: str = "All cats purr.",
    question: str = "Which is true?",
    separator: str = "",
) -> list[str]:
    return [separator, answer, context, question, *options]


def write_blocks(path: Path, blocks: list[list[str]], trailing: str = "") -> Path:
    path.write_text("\n".join(line for b in blocks for line in b) + trailing, encoding="utf-8")
    return path


@pytest.mark.parametrize("split", ["test", "eval"])
def test_row_counts(bench, full_logiqa_dir, split):
    assert sum(1 for _ in bench.examples(split, options={"data": full_logiqa_dir})) == 651


@pytest.mark.parametrize("split, blocks", [("test", 40), ("eval", 30)])
def test_fixture_block_counts(bench, logiqa_dir, split, blocks):
    assert sum(1 for _ in bench.examples(split, options={"data": logiqa_dir})) == blocks


def test_first_test_example(bench, logiqa_dir):
    example = next(bench.examples("test", options={"data": logiqa_dir}))
    assert example.id == "logic/test/0"
    assert example.prompt.startswith("In the planning of a new district in a township,")
    assert example.prompt.endswith(
        "\nQuestion: Based on the above statement, which of the following can be derived?\n"
        "A. Civic Park is north of the administrative service area\n"
        "B. The leisure area is southwest of the cultural area\n"
        "C. The cultural district is in the northeast of the business district\n"
        "D. The business district is southeast of the leisure area\n"
        "Answer:"
    )
    assert example.answer_index == 0 and example.meta["answer_letter"] == "A"
    assert example.target == " Civic Park is north of the administrative service area"
    assert example.choices[1] == " The leisure area is southwest of the cultural area"


@pytest.mark.parametrize("which", ["fixture", "full"])
@pytest.mark.parametrize("split", ["test", "eval"])
def test_multiple_choice_invariants(bench, request, which, split):
    folder = request.getfixturevalue("logiqa_dir" if which == "fixture" else "full_logiqa_dir")
    answers = [
        line.strip().upper()
        for line in (Path(folder) / f"{split}.txt").read_text(encoding="utf-8").split("\n")[1::8]
    ]
    examples = list(bench.examples(split, options={"data": folder}))
    assert [e.meta["answer_letter"] for e in examples] == answers
    for example in examples:
        assert len(example.choices) == 4
        assert example.target == example.choices[example.answer_index]
        assert LETTERS[example.answer_index] == example.meta["answer_letter"]
        lines = example.prompt.split("\n")
        assert lines[-1] == "Answer:"
        for letter, choice, line in zip(LETTERS, example.choices, lines[-5:-1], strict=False):
            assert choice.startswith(" ") and choice.strip()
            assert line == f"{letter}.{choice}", "the prompt lists the same options as the choices"
    assert len({e.answer_index for e in examples}) == 4


def test_letter_choices(bench, logiqa_dir):
    example = next(bench.examples("test", options={"data": logiqa_dir, "choices": "letter"}))
    assert example.choices == (" A", " B", " C", " D")
    assert example.target == " A"


def test_labels_decide_option_order_when_lines_are_out_of_order(bench, full_logiqa_dir):
    # test.txt line 865: options labelled A. C. B. D. in the file; answer b is "No.2 valve and No.3 valve."
    examples = bench.examples("test", options={"data": full_logiqa_dir})
    valves = next(e for e in examples if e.meta["line"] == 865)
    assert valves.choices[1] == " No.2 valve and No.3 valve."
    assert valves.choices[2] == " No.3 valve and No.5 valve."
    assert valves.target == " No.2 valve and No.3 valve."


def test_loose_labels_are_removed_and_unlabelled_lines_kept(bench, logiqa_dir):
    examples = {e.meta["line"]: e for e in bench.examples("test", options={"data": logiqa_dir})}
    assert examples[17].choices[:2] == (" No dangshen", " No Shouwu")  # "A No dangshen", "B No Shouwu"
    assert examples[81].choices[0].startswith(" Many Chinese people")  # "A? Many Chinese people ..."


def test_a_label_moved_into_the_text_is_kept(bench, full_logiqa_dir):
    examples = {e.meta["line"]: e for e in bench.examples("test", options={"data": full_logiqa_dir})}
    assert examples[4353].choices[1] == " Storehouse B.3"  # the label moved into the text


def test_order_is_the_file_order_and_limit_a_prefix(bench, logiqa_dir):
    full = list(bench.examples("eval", limit=30, options={"data": logiqa_dir}))
    assert [e.meta["line"] for e in full] == [1 + 8 * i for i in range(30)]
    assert list(bench.examples("eval", limit=7, seed=5, options={"data": logiqa_dir})) == full[:7]


def test_a_single_file_trailing_newlines_and_crlf_are_accepted(bench, tmp_path):
    path = tmp_path / "mine.txt"
    path.write_bytes("\r\n".join(block() + block(answer="D")).encode() + b"\r\n\r\n")
    examples = list(bench.examples("test", options={"data": str(path)}))
    assert [e.target for e in examples] == [" two", " four"]
    assert examples[1].meta["line"] == 9


def test_without_data_or_a_cached_hub_dataset_the_error_names_both(bench):
    # conftest: HF_DATASETS_OFFLINE=1 and an empty cache
    with pytest.raises(ConfigError, match=r"benchmark 'logic': .*extraordinarylab/logiqa.*--data PATH"):
        bench.examples()


def test_missing_split_file_names_the_directory(bench, tmp_path):
    write_blocks(tmp_path / "test.txt", [block()])
    with pytest.raises(ConfigError, match=r"holds no eval.txt for split 'eval' \(it has: test.txt\)"):
        bench.examples("eval", options={"data": str(tmp_path)})


@pytest.mark.parametrize(
    "bad_block, line, expected",
    [
        (block(answer="e"), 10, "expected the answer letter a, b, c or d, got 'e'"),
        (block(answer=""), 10, "expected the answer letter a, b, c or d, got ''"),
        (block(separator="x"), 9, "expected the blank line that starts a block, got 'x'"),
        (block(context=""), 11, "expected the context, got an empty line"),
        (block(question=" "), 12, "expected the question, got an empty line"),
        (
            block(options=("A.one", "A.two", "C.three", "D.four")),
            14,
            "expected option B, a line starting with 'B.', got 'A.two'",
        ),
        (
            block(options=("A.one", "B.two", "C.three", "B.four")),
            16,
            "expected option D, a line starting with 'D.', got 'B.four'",
        ),
        (
            block(options=("A.one", "B.", "C.three", "D.four")),
            14,
            "expected the text of option B, got an empty line",
        ),
    ],
)
def test_malformed_blocks_name_file_line_and_expectation(bench, tmp_path, bad_block, line, expected):
    path = write_blocks(tmp_path / "test.txt", [block(), bad_block, block()])
    with pytest.raises(DataFormatError, match=re.escape(f"{path}, line {line}: {expected}")):
        list(bench.examples("test", options={"data": str(tmp_path)}))


def test_a_missing_option_line_shifts_the_next_block_and_is_caught(bench, tmp_path):
    short = block()[:7]  # option D lost
    path = write_blocks(tmp_path / "test.txt", [block(), short, block()])
    with pytest.raises(DataFormatError, match=re.escape(f"{path}, line 16: expected the text of option D")):
        list(bench.examples("test", options={"data": str(path)}))


def test_a_file_ending_mid_block_is_an_error(bench, tmp_path):
    path = write_blocks(tmp_path / "test.txt", [block(), block()[:5]])
    with pytest.raises(
        DataFormatError, match=re.escape(f"{path}, line 9: expected a block of 8 lines") + ".*ends after 5"
    ):
        list(bench.examples("test", options={"data": str(path)}))
