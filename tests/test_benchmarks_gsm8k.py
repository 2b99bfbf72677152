"""GSM8K loader: real files (committed first rows; the full files when present), prompt formats,
the hub call (faked here; rebuilt on disk in test_benchmarks_hub.py), malformed input."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest

from scircuits.platform.contract.errors import ConfigError, DataFormatError
from scircuits.plugins.benchmarks import hub
from scircuits.plugins.benchmarks.gsm8k import GSM8KBenchmark

JANET_QUESTION = "Janet’s ducks lay 16 eggs per day."


@pytest.fixture(scope="module")
def bench() -> GSM8KBenchmark:
    return GSM8KBenchmark()


@pytest.fixture(scope="module")
def gsm8k_dir(bench_data) -> str:
    """The first 40 test / 30 train rows of the real files."""
    return str(bench_data / "gsm8k")


@pytest.fixture(scope="module")
def full_gsm8k_dir(shared_data) -> str:
    return str(shared_data / "gsm8k")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


GOOD_ROW = {"question": "What is 2 + 3?", "answer": "2 + 3 = <<2+3=5>>5\n#### 5"}


@pytest.mark.parametrize("split, rows", [("test", 1319), ("train", 7473)])
def test_row_counts(bench, full_gsm8k_dir, split, rows):
    assert sum(1 for _ in bench.examples(split, options={"data": full_gsm8k_dir})) == rows


@pytest.mark.parametrize("split, rows", [("test", 40), ("train", 30)])
def test_fixture_row_counts(bench, gsm8k_dir, split, rows):
    assert sum(1 for _ in bench.examples(split, options={"data": gsm8k_dir})) == rows


def test_first_test_example_with_gold_reasoning(bench, gsm8k_dir):
    example = next(bench.examples("test", options={"data": gsm8k_dir, "cot": "gold"}))
    assert example.id == "gsm8k/test/0"
    assert example.prompt.startswith(f"Question: {JANET_QUESTION}")
    assert example.prompt.endswith(
        "\nAnswer: Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n"
        "She makes 9 * 2 = $18 every day at the farmer’s market.\nThe answer is"
    )
    assert example.target == " 18"
    assert example.delimiter == "."  # "The answer is 18."
    assert example.meta["value"] == 18
    assert example.meta["where"].endswith("test.jsonl, line 1")
    assert example.meta["prompt_mode"] == "gold"
    assert example.meta["answer_in_prompt"] is True  # "$18 every day" in the gold reasoning


def test_the_default_prompt_holds_no_gold_solution(bench, gsm8k_dir):
    """Default cot="none": the question alone, the answer line ended by "\\n"; the mode is the label."""
    default = next(bench.examples("test", options={"data": gsm8k_dir}))
    explicit = next(bench.examples("test", options={"data": gsm8k_dir, "cot": "none"}))
    assert default == explicit
    assert default.prompt.startswith(f"Question: {JANET_QUESTION}")
    assert default.prompt.endswith("at the farmers' market?\nAnswer:")
    assert default.delimiter == "\n"
    assert default.meta["prompt_mode"] == "none"
    assert default.meta["answer_in_prompt"] is False
    assert bench.label() == "cot-none" and bench.label({"cot": "gold"}) == "cot-gold"


def test_answer_in_prompt_marks_whole_numbers_only(bench, tmp_path):
    rows = [
        {"question": "A box holds 180 pens and 12 pencils. How many?", "answer": "x\n#### 18"},
        {"question": "Tom has 18 apples and 0.5 pears. How many?", "answer": "x\n#### 18"},
        {"question": "It costs $1,600 in total. How much?", "answer": "x\n#### 1,600"},
    ]
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    marks = [e.meta["answer_in_prompt"] for e in bench.examples("test", options={"data": str(path)})]
    assert marks == [False, True, True]


def test_cot_none_gives_the_question_alone(bench, gsm8k_dir):
    example = next(bench.examples("test", options={"data": gsm8k_dir, "cot": "none"}))
    assert example.prompt.startswith(f"Question: {JANET_QUESTION}")
    assert example.prompt.endswith("at the farmers' market?\nAnswer:")
    assert "Janet sells" not in example.prompt
    assert example.target == " 18"


def test_no_prompt_holds_the_final_line_or_a_calculator_annotation(bench, full_gsm8k_dir):
    for example in bench.examples("test", options={"data": full_gsm8k_dir}):
        assert "####" not in example.prompt and "<<" not in example.prompt
        assert example.target.startswith(" ") and example.target.strip()


def test_answers_with_thousands_separators_keep_the_file_text(bench, full_gsm8k_dir):
    with_comma = [e for e in bench.examples("test", options={"data": full_gsm8k_dir}) if "," in e.target]
    assert with_comma, "GSM8K test has answers like 2,125"
    for example in with_comma:
        assert example.meta["value"] == int(example.target.replace(",", ""))


def test_order_is_the_file_order_and_limit_a_prefix(bench, gsm8k_dir):
    lines = (Path(gsm8k_dir) / "test.jsonl").read_text().splitlines()
    examples = list(bench.examples("test", limit=25, options={"data": gsm8k_dir}))
    assert [e.target.strip() for e in examples] == [
        json.loads(line)["answer"].split("####")[-1].strip() for line in lines[:25]
    ]
    assert list(bench.examples("test", limit=5, seed=9, options={"data": gsm8k_dir})) == examples[:5]


def test_a_jsonl_file_is_accepted_as_data(bench, gsm8k_dir):
    path = str(Path(gsm8k_dir) / "test.jsonl")
    assert sum(1 for _ in bench.examples("test", options={"data": path})) == 40
    assert next(bench.examples("train", options={"data": path})).target == " 18", "one file serves any split"


def test_missing_data_path_names_it_and_the_flag(bench, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=re.escape(f"data path {missing} does not exist. Pass --data PATH")):
        bench.examples(options={"data": str(missing)})


def test_a_directory_without_the_split_file_names_what_it_has(bench, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [GOOD_ROW])
    with pytest.raises(ConfigError, match=r"holds no test.jsonl for split 'test' \(it has: train.jsonl\)"):
        bench.examples("test", options={"data": str(tmp_path)})


def test_without_data_or_datasets_the_error_says_to_pass_data(bench, monkeypatch):
    monkeypatch.delenv("HF_DATASETS_OFFLINE")  # online: the package is what is missing
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ConfigError, match=r"openai/gsm8k.*`datasets` package is not installed.*--data PATH"):
        bench.examples()


def fake_datasets(load_dataset) -> types.SimpleNamespace:
    config = types.SimpleNamespace(HF_HUB_OFFLINE=False, HF_DATASETS_CACHE="/cache/datasets")
    return types.SimpleNamespace(load_dataset=load_dataset, config=config)


def test_without_data_the_hub_dataset_is_read_through_datasets(bench, monkeypatch):
    monkeypatch.delenv("HF_DATASETS_OFFLINE")  # the library is faked: let it "reach the hub"
    monkeypatch.setattr(hub, "hub_unreachable", lambda: None)  # and the hub's probe with it
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return [GOOD_ROW]

    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(load_dataset))
    examples = list(bench.examples("train"))
    assert calls == [("openai/gsm8k", "main", "train")]
    assert [(e.id, e.target, e.meta["source"]) for e in examples] == [
        ("gsm8k/train/0", " 5", "hf:openai/gsm8k")
    ]


def test_an_unreachable_hub_is_a_config_error(bench, monkeypatch):
    """Past the probe (a hub that answers it), `datasets`' own failure is the one line."""
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.setattr(hub, "hub_unreachable", lambda: None)

    def load_dataset(name, config, split):
        raise ConnectionError("offline")

    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(load_dataset))
    with pytest.raises(
        ConfigError, match=r"openai/gsm8k .*split 'test': ConnectionError: offline.*--data PATH"
    ):
        bench.examples()


@pytest.mark.parametrize(
    "bad_line, expected",
    [
        ('{"question": "q", "answer": ', r"line 2: expected one JSON object per line, got invalid JSON"),
        ("[1, 2]", r"line 2: expected a JSON object per line, got list"),
        ({"question": "q"}, r"line 2: expected the field 'answer'; the object has \['question'\]"),
        ({"question": "", "answer": "#### 1"}, r"line 2: expected 'question' to be a non-empty string"),
        (
            {"question": "q", "answer": "2 + 3 = 5"},
            r"line 2: expected the 'answer' to end with a '#### N' line",
        ),
        ({"question": "q", "answer": "2 + 3 = 5\n####  "}, r"line 2: expected a number after '####'"),
    ],
)
def test_malformed_lines_name_file_line_and_expectation(bench, tmp_path, bad_line, expected):
    path = write_jsonl(tmp_path / "test.jsonl", [GOOD_ROW, bad_line, GOOD_ROW])
    examples = bench.examples("test", options={"data": str(path)})
    with pytest.raises(DataFormatError, match=re.escape(f"{path}, ") + expected):
        list(examples)


def test_blank_lines_are_skipped_but_counted_in_line_numbers(bench, tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", [GOOD_ROW, "", {"question": "q"}])
    with pytest.raises(DataFormatError, match=r"line 3: expected the field 'answer'"):
        list(bench.examples("test", options={"data": str(path)}))
