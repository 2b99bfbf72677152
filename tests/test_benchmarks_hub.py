"""Benchmarks without --data: their Hugging Face datasets, read through `datasets`.

The hub itself is never reached in tests (conftest sets HF_DATASETS_OFFLINE=1 and an empty cache).
Each benchmark's hub dataset is rebuilt on disk in the hub repository's layout (the same folders,
parquet or JSONL files and README `configs`), from the committed rows of the real files; the
benchmark is pointed at that folder and loads it through the same `datasets.load_dataset` call, and
its examples must equal those read from the file rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scircuits.plugins.benchmarks import competition_math, gsm8k, logiqa
from scircuits.plugins.benchmarks.competition_math import MathBenchmark
from scircuits.plugins.benchmarks.gsm8k import GSM8KBenchmark
from scircuits.plugins.benchmarks.hub import HubDataset
from scircuits.plugins.benchmarks.logiqa import LETTERS, LogiQABenchmark, _read_blocks, parse_block
from tests.cli_helpers import run_cli


def comparable(examples) -> list[tuple]:
    """What a run uses of an example; meta (where it was read from) differs by design."""
    return [(e.id, e.prompt, e.target, e.choices, e.answer_index) for e in examples]


def write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def write_card(folder: Path, config: str, splits: dict[str, str]) -> None:
    """A dataset card whose `configs` name the data files per split, as the hub repo's does."""
    lines = ["---", "configs:", f"- config_name: {config}", "  data_files:"]
    for split, pattern in splits.items():
        lines += [f"  - split: {split}", f"    path: {pattern}"]
    (folder / "README.md").write_text("\n".join([*lines, "---", ""]), encoding="utf-8")


def repo_folder(tmp_path: Path, name: str) -> Path:
    # `datasets` caches a local folder's prepared data under the folder's name: one name per test
    return tmp_path / f"{name}-{tmp_path.name}"


def jsonl_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_gsm8k_hub_layout_gives_the_file_examples(bench_data, tmp_path, monkeypatch):
    # openai/gsm8k: main/{train,test}-00000-of-00001.parquet, columns question, answer
    repo = repo_folder(tmp_path, "gsm8k")
    for split in ("test", "train"):
        write_parquet(
            repo / "main" / f"{split}-00000-of-00001.parquet",
            jsonl_rows(bench_data / "gsm8k" / f"{split}.jsonl"),
        )
    write_card(repo, "main", {"train": "main/train-*", "test": "main/test-*"})
    monkeypatch.setattr(gsm8k, "HF_DATASET", str(repo))
    bench = GSM8KBenchmark()
    for split in ("test", "train"):
        from_hub = list(bench.examples(split))
        from_file = list(bench.examples(split, options={"data": str(bench_data / "gsm8k")}))
        assert len(from_hub) == len(jsonl_rows(bench_data / "gsm8k" / f"{split}.jsonl")) > 0
        assert comparable(from_hub) == comparable(from_file)
        assert from_hub[0].meta["source"] == f"hf:{repo}" and from_hub[3].meta["where"].endswith("row 3")
    assert comparable(bench.examples("test", limit=5, options={"cot": "none"})) == comparable(
        bench.examples("test", limit=5, options={"cot": "none", "data": str(bench_data / "gsm8k")})
    )


def test_math_hub_layouts_give_the_file_examples(bench_data, tmp_path, monkeypatch):
    # DigitalLearningGmbH/MATH-lighteval (config default): data/test-00000-of-00001.parquet with
    # problem, level, solution, type; HuggingFaceH4/MATH-500: test.jsonl at the top of the repo.
    lighteval = repo_folder(tmp_path, "MATH-lighteval")
    rows = jsonl_rows(bench_data / "math" / "test.jsonl")
    columns = [{key: row[key] for key in ("problem", "level", "solution", "type")} for row in rows]
    write_parquet(lighteval / "data" / "test-00000-of-00001.parquet", columns)
    write_card(lighteval, "default", {"test": "data/test-*"})
    math500 = repo_folder(tmp_path, "MATH-500")
    math500.mkdir()
    (math500 / "test.jsonl").write_text((bench_data / "math" / "math500.jsonl").read_text(encoding="utf-8"))
    monkeypatch.setattr(
        competition_math,
        "HUB_DATASETS",
        {
            "test": HubDataset(str(lighteval), "default", "test"),
            "math500": HubDataset(str(math500), None, "test"),
        },
    )
    bench = MathBenchmark()
    for split, options in (("test", {}), ("test", {"cot": "none", "level": "2,3"}), ("math500", {})):
        from_hub = list(bench.examples(split, options=options))
        from_file = list(bench.examples(split, options={**options, "data": str(bench_data / "math")}))
        assert from_hub and comparable(from_hub) == comparable(from_file)
        assert [(e.meta["level"], e.meta["type"]) for e in from_hub] == [
            (e.meta["level"], e.meta["type"]) for e in from_file
        ]
    assert next(bench.examples("math500")).meta["row"] == 0


def test_logiqa_hub_layout_gives_the_file_examples(bench_data, tmp_path, monkeypatch):
    # extraordinarylab/logiqa (config default): data/{test,validation}-00000-of-00001.parquet with
    # context, question, choices (option texts), answer (letter), answer_index
    repo = repo_folder(tmp_path, "logiqa")
    for split, hub_split in (("test", "test"), ("eval", "validation")):
        path = bench_data / "logiqa" / f"{split}.txt"
        rows = []
        for first_line, lines in _read_blocks(path):
            answer, context, question, options = parse_block(lines, first_line, path)
            rows.append(
                {
                    "context": context,
                    "question": question,
                    "choices": options,
                    "answer": answer,
                    "answer_index": LETTERS.index(answer),
                }
            )
        write_parquet(repo / "data" / f"{hub_split}-00000-of-00001.parquet", rows)
    write_card(repo, "default", {"test": "data/test-*", "validation": "data/validation-*"})
    monkeypatch.setattr(logiqa, "HF_DATASET", str(repo))
    bench = LogiQABenchmark()
    for split in ("test", "eval"):
        for choices in ("text", "letter"):
            from_hub = list(bench.examples(split, options={"choices": choices}))
            from_file = list(
                bench.examples(split, options={"choices": choices, "data": str(bench_data / "logiqa")})
            )
            assert from_hub and comparable(from_hub) == comparable(from_file)
            assert [e.meta["answer_letter"] for e in from_hub] == [e.meta["answer_letter"] for e in from_file]


@pytest.mark.parametrize(
    "row, expected",
    [
        (
            {"context": "c", "question": "q", "choices": ["a", "b", "c"], "answer_index": 0},
            "list of 4 option texts",
        ),
        ({"context": "c", "question": "q", "choices": ["a", "", "c", "d"], "answer_index": 0}, "option B"),
        (
            {"context": "c", "question": "q", "choices": ["a", "b", "c", "d"], "answer_index": 7},
            "answer_index' 0-3",
        ),
        (
            {
                "context": "c",
                "question": "q",
                "choices": ["a", "b", "c", "d"],
                "answer": "B",
                "answer_index": 2,
            },
            "disagree",
        ),
        ({"context": "", "question": "q", "choices": ["a", "b", "c", "d"], "answer_index": 0}, "'context'"),
    ],
)
def test_malformed_logiqa_hub_rows_name_the_row(tmp_path, monkeypatch, row, expected):
    from scircuits.errors import DataFormatError

    repo = repo_folder(tmp_path, "logiqa")
    good = {
        "context": "c",
        "question": "q",
        "choices": ["a", "b", "c", "d"],
        "answer": "A",
        "answer_index": 0,
    }
    write_parquet(repo / "data" / "test-00000-of-00001.parquet", [good, {**good, **row}])
    write_card(repo, "default", {"test": "data/test-*"})
    monkeypatch.setattr(logiqa, "HF_DATASET", str(repo))
    with pytest.raises(DataFormatError, match=f"{repo} test, row 1: .*{expected}"):
        list(LogiQABenchmark().examples("test"))


def test_a_missing_split_in_the_hub_dataset_is_a_config_error(tmp_path, monkeypatch):
    from scircuits.errors import ConfigError

    repo = repo_folder(tmp_path, "logiqa")
    row = {"context": "c", "question": "q", "choices": ["a", "b", "c", "d"], "answer": "A", "answer_index": 0}
    write_parquet(repo / "data" / "test-00000-of-00001.parquet", [row])
    write_card(repo, "default", {"test": "data/test-*"})
    monkeypatch.setattr(logiqa, "HF_DATASET", str(repo))
    with pytest.raises(ConfigError, match=r"split 'validation'.*--data PATH"):
        LogiQABenchmark().examples("eval")


def test_without_the_datasets_package_the_error_names_the_ways_out(monkeypatch):
    import sys

    from scircuits.errors import ConfigError

    monkeypatch.delenv("HF_DATASETS_OFFLINE")  # online: the package is what is missing
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    for bench in (GSM8KBenchmark(), MathBenchmark(), LogiQABenchmark()):
        with pytest.raises(ConfigError, match=r"`datasets` package is not installed.*--data PATH"):
            bench.examples()


def test_offline_the_library_is_asked_only_when_a_cache_may_hold_the_dataset(tmp_path, monkeypatch):
    import datasets

    from scircuits.errors import ConfigError

    calls = []

    def load_dataset(path, config, split):
        calls.append(path)
        return [{"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ConfigError, match=r"offline .* the cache does not hold it"):
        GSM8KBenchmark().examples()  # neither cache exists
    (tmp_path / "hub" / "datasets--openai--gsm8k").mkdir(parents=True)
    assert [e.target for e in GSM8KBenchmark().examples()] == [" 5"]
    assert calls == ["openai/gsm8k"]


@pytest.mark.parametrize(
    "benchmark, split, dataset",
    [
        ("gsm8k", None, "openai/gsm8k"),
        ("math", None, "DigitalLearningGmbH/MATH-lighteval"),
        ("math", "math500", "HuggingFaceH4/MATH-500"),
        ("logic", None, "extraordinarylab/logiqa"),
    ],
)
def test_offline_with_nothing_cached_exits_2_naming_the_dataset_cache_and_flags(
    tmp_path, benchmark, split, dataset
):
    hf_home = tmp_path / "empty-hf-home"
    out = tmp_path / "run"
    args = ["run", "--benchmark", benchmark, "--out", str(out)]
    if split:  # `run` has no --split: go through `collect`
        args = ["collect", "--benchmark", benchmark, "--split", split, "--out", str(out)]
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HOME": str(hf_home)}
    env_without_cache = {**env, "HF_DATASETS_CACHE": str(hf_home / "datasets")}
    result = run_cli(*args, env=env_without_cache, timeout=120)
    assert result.returncode == 2, result.stderr
    message = result.stderr
    assert "Traceback" not in message and "Loading weights" not in message
    assert message.count("Error:") == 1
    for part in (dataset, str(hf_home / "datasets"), "HF_DATASETS_OFFLINE", "--data PATH"):
        assert part in message, part
    assert not out.exists()


def test_online_with_the_hub_unreachable_and_nothing_cached_fails_at_once(tmp_path, monkeypatch):
    """`datasets` would retry the hub for about half a minute; a name that does not resolve (or no
    connection within 3 s) is said at once, and `datasets` is not asked."""
    import time

    import datasets

    from scircuits.errors import ConfigError

    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # RFC 2606: never resolves
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("datasets was asked"))
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"the hub cannot be reached \(hub\.invalid: .*--data PATH"):
        GSM8KBenchmark().examples()
    assert time.monotonic() - start < 20  # against about 30 s of retries
