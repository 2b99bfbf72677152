"""The built-in benchmarks as plugins: registration, option errors, light imports, SmolLM2 tokenisation."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from scircuits import Benchmark
from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.manager.plugin_set import get_plugins

BUILTIN = {"arithmetic": False, "gsm8k": False, "math": False, "logic": True}  # name -> multiple choice


def data_options(bench_data, name: str) -> dict:
    folder = {"arithmetic": None, "gsm8k": "gsm8k", "math": "math", "logic": "logiqa"}[name]
    return {} if folder is None else {"data": str(bench_data / folder)}


def test_builtins_are_registered_through_the_plugin_manager():
    benchmarks = get_plugins().benchmarks
    for name, multiple_choice in BUILTIN.items():
        benchmark = benchmarks.get(name)
        assert isinstance(benchmark, Benchmark)
        assert benchmark.name == name and benchmark.description
        assert benchmark.multiple_choice is multiple_choice
        assert "test" in benchmark.splits
        assert benchmarks.owner(name) == "builtin:benchmarks"


def test_facts_list_the_options():
    benchmarks = get_plugins().benchmarks
    assert benchmarks.get("arithmetic").facts()["options"] == [
        "operations",
        "digits",
        "n_shots",
        "n_examples",
        "seed",
    ]
    assert benchmarks.get("gsm8k").facts()["options"] == ["data", "cot"]
    assert benchmarks.get("math").facts()["options"] == ["data", "cot", "level", "type"]
    assert benchmarks.get("logic").facts()["options"] == ["data", "choices"]


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_unknown_option_is_rejected_with_the_valid_ones(name):
    benchmark = get_plugins().benchmarks.get(name)
    valid = ", ".join(benchmark.Options.model_fields)
    with pytest.raises(
        ConfigError,
        match=rf"benchmark '{name}' options: shots: Extra inputs are not permitted.*"
        rf"Valid fields: {re.escape(valid)}\.",
    ):
        benchmark.examples("test", options={"shots": 3})


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_unknown_split_and_bad_limit_are_config_errors(name, bench_data):
    benchmark = get_plugins().benchmarks.get(name)
    with pytest.raises(ConfigError, match=rf"benchmark '{name}' has no split 'validation'; its splits: test"):
        benchmark.examples("validation", options=data_options(bench_data, name))
    with pytest.raises(ConfigError, match="limit must be a whole number >= 0"):
        benchmark.examples("test", limit=-1, options=data_options(bench_data, name))


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_examples_are_deterministic_with_unique_ids(name, bench_data):
    benchmark = get_plugins().benchmarks.get(name)
    options = data_options(bench_data, name)
    first = list(benchmark.examples("test", limit=40, seed=0, options=options))
    assert first == list(benchmark.examples("test", limit=40, seed=0, options=options))
    assert len({e.id for e in first}) == 40
    assert all(e.id.startswith(f"{name}/test/") for e in first)
    assert all(e.target and e.prompt for e in first)


def test_importing_the_benchmarks_loads_no_heavy_library():
    code = (
        "import sys, scircuits.plugins.benchmarks as b; "
        "heavy = [m for m in ('torch', 'transformers', 'nnsight', 'datasets') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


@pytest.mark.slow
def test_prompt_plus_target_tokenises_like_the_natural_text_and_arithmetic_scores(smollm2, bench_data):
    import torch

    from scircuits.platform.model.sequences import encode_example

    tokenizer = smollm2.tokenizer
    benchmarks = get_plugins().benchmarks
    cases = [
        *benchmarks.get("arithmetic").examples("test", limit=40),
        *benchmarks.get("gsm8k").examples("test", limit=10, options=data_options(bench_data, "gsm8k")),
        *benchmarks.get("gsm8k").examples(
            "test", limit=10, options={**data_options(bench_data, "gsm8k"), "cot": "none"}
        ),
    ]
    for example in cases:
        natural = tokenizer(example.prompt + example.target, add_special_tokens=True)["input_ids"]
        assert list(encode_example(tokenizer, example).input_ids) == list(natural), example.id
    assert (
        tokenizer("= 17", add_special_tokens=False)["input_ids"][1:]
        == tokenizer(" 17", add_special_tokens=False)["input_ids"]
    )

    # The default arithmetic format gives a real, measurable accuracy
    # (teacher-forced, every target token argmax).
    sequences = [encode_example(tokenizer, example) for example in cases[:40]]
    width = max(len(s.input_ids) for s in sequences)
    ids = torch.zeros((len(sequences), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, sequence in enumerate(sequences):  # right padding keeps every real position unchanged
        ids[row, : len(sequence.input_ids)] = torch.tensor(sequence.input_ids)
        mask[row, : len(sequence.input_ids)] = 1
    with torch.no_grad():
        predicted = smollm2.model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
    correct = sum(
        bool(
            (
                predicted[row, s.target_start - 1 : len(s.input_ids) - 1]
                == ids[row, s.target_start : len(s.input_ids)]
            ).all()
        )
        for row, s in enumerate(sequences)
    )
    assert 4 <= correct <= 36, f"{correct}/40 correct: SmolLM2 gets about a quarter of these right"


class Faulty(Benchmark):
    name = "faulty"

    def __init__(self, items):
        self.items = items

    def examples(self, split="test", limit=None, seed=0, options=None):
        for item in self.items:
            yield item() if callable(item) else item


def test_the_platform_reads_a_benchmarks_examples_checked_naming_it():
    from scircuits import ConfigError, Example

    good = Example(id="a", prompt="1 + 1 =", target=" 2")

    def boom():
        raise ValueError("data row 2 is malformed")

    cases = [
        ([good, {"prompt": "x"}], "benchmark 'faulty' gave a dict, not an Example"),
        ([Example(id="e", prompt="p", target="")], "example 'e' has an empty target"),
        ([good, good], "gives the example id 'a' twice"),
        ([good, boom], "failed while reading its examples: ValueError: data row 2 is malformed"),
    ]
    for items, says in cases:
        with pytest.raises(ConfigError, match=says):
            list(Faulty(items).read_examples())
    assert list(Faulty([good]).read_examples()) == [good]
