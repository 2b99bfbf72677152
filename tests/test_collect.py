"""The collect stage end to end: stored rows, identity, resume after kill -9, refusals, remote mode."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from scircuits.cli import cli
from scircuits.platform.collect.collection import run_collect
from scircuits.platform.config import CollectConfig
from scircuits.platform.manager.plugin_set import get_plugins
from scircuits.platform.model.sequences import encode_example
from scircuits.store import ActivationStore, NonFiniteActivationsError, StoreMismatchError
from scircuits.testing import save_tiny_model, tiny_loaded_model


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    """A tiny random GPT-2 saved as a folder, and the same model loaded for references."""
    loaded = tiny_loaded_model("gpt2-medium", seed=11)
    folder = save_tiny_model(loaded, tmp_path_factory.mktemp("tiny-gpt2"))
    return folder, loaded


def reference_rows(loaded, layer, site, ids):
    captured = []
    handle = loaded.site_module(layer, site).register_forward_hook(
        lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad():
            loaded.model(input_ids=torch.tensor([list(ids)]))
    finally:
        handle.remove()
    return captured[0][0].float().numpy()


def relative_error(actual, expected):
    return float(
        (
            np.linalg.norm(actual - expected, axis=-1) / np.maximum(np.linalg.norm(expected, axis=-1), 1e-12)
        ).max()
    )


def store_rows_by_example(store):
    acts = store.read_rows(0, store.n_tokens)
    ids = store.example_ids
    return {
        int(e): (acts[ids == e], store.token_ids[ids == e], store.positions[ids == e]) for e in np.unique(ids)
    }


def test_collect_command_stores_each_example_as_traced_alone(tiny_gpt2, tmp_path):
    folder, loaded = tiny_gpt2
    out = tmp_path / "acts.zarr"
    result = CliRunner().invoke(
        cli,
        [
            "collect",
            "--model",
            "gpt2-medium",
            "--model-path",
            str(folder),
            "--layer",
            "2",
            "--site",
            "mlp",
            "--limit",
            "6",
            "--batch-size",
            "4",
            "--dtype",
            "float32",
            "--option",
            "n_shots=1",
            "--out",
            str(out),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "6 examples" in result.output
    store = ActivationStore(out)
    attrs = store.attrs
    assert attrs["complete"] and attrs["source"] == "traced" and attrs["n_examples"] == 6
    assert (attrs["model"], attrs["model_id"], attrs["layer"], attrs["site"]) == (
        "gpt2-medium",
        str(folder),
        2,
        "mlp",
    )
    assert attrs["model_revision"].startswith("sha256:") and attrs["site_path"] == "transformer.h.2.mlp"
    assert (attrs["benchmark"], attrs["split"], attrs["d_model"]) == ("arithmetic", "test", 64)
    config = CollectConfig.validated(attrs["config"])
    assert config.benchmark_options == {"n_shots": 1} and attrs["config_hash"] == config.config_hash()

    examples = list(get_plugins().benchmarks.get("arithmetic").examples("test", 6, 0, {"n_shots": 1}))
    by_example = store_rows_by_example(store)
    assert sorted(by_example) == list(range(6))
    for index, example in enumerate(examples):
        ids = encode_example(loaded.tokenizer, example).input_ids
        acts, token_ids, positions = by_example[index]
        assert token_ids.tolist() == list(ids)
        assert positions.tolist() == list(range(len(ids)))
        assert relative_error(acts, reference_rows(loaded, 2, "mlp", ids)) < 1e-5


def tiny_config(folder: Path, out: Path, **changes) -> CollectConfig:
    values = {
        "model": "gpt2-medium",
        "model_path": str(folder),
        "layer": 1,
        "limit": 5,
        "batch_size": 2,
        "out": str(out),
        "progress": False,
    }
    values.update(changes)
    return CollectConfig(**values)


def test_a_different_command_into_an_existing_store_is_refused_naming_the_difference(tiny_gpt2, tmp_path):
    folder, _ = tiny_gpt2
    out = tmp_path / "acts.zarr"
    first = run_collect(tiny_config(folder, out), get_plugins())
    assert (first.n_examples, first.new_examples) == (5, 5)
    again = run_collect(
        tiny_config(folder, out, batch_size=3), get_plugins()
    )  # batch size does not change the rows
    assert again.already_complete and again.new_examples == 0
    with pytest.raises(StoreMismatchError) as info:
        run_collect(tiny_config(folder, out, layer=2), get_plugins())
    assert "layer: stored 1, now 2" in str(info.value)
    with pytest.raises(StoreMismatchError, match="site: stored 'resid', now 'attn'"):
        run_collect(tiny_config(folder, out, site="attn"), get_plugins())


def test_default_layer_and_an_explicit_equal_layer_are_one_command(tiny_gpt2, tmp_path):
    folder, _ = tiny_gpt2
    adapter = get_plugins().models.get("hf:" + str(folder))
    out = tmp_path / "acts.zarr"
    run_collect(
        tiny_config(folder, out, model="hf:" + str(folder), model_path=None, layer=None), get_plugins()
    )
    assert ActivationStore(out).attrs["layer"] == 2  # the middle of 4 blocks, found by the generic adapter
    assert run_collect(
        tiny_config(folder, out, model="hf:" + str(folder), model_path=None, layer=2), get_plugins()
    ).already_complete
    assert adapter.name == "hf:" + str(folder)


def collect_command(folder: Path, out: Path, n: int) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from scircuits.cli import main; main()",
        "collect",
        "--model",
        "gpt2-medium",
        "--model-path",
        str(folder),
        "--layer",
        "1",
        "--limit",
        str(n),
        "--option",
        f"n_examples={n}",
        "--option",
        "digits=3",
        "--batch-size",
        "3",
        "--chunk-rows",
        "64",
        "--out",
        str(out),
        "--no-progress",
    ]


def recorded(out: Path) -> dict:
    try:
        return json.loads((out / "zarr.json").read_text())["attributes"]
    except (OSError, ValueError, KeyError):
        return {}


def test_resume_after_kill_9_ends_identical_to_an_uninterrupted_run(tiny_gpt2, tmp_path):
    folder, _ = tiny_gpt2
    n = 1000
    killed, whole = tmp_path / "killed.zarr", tmp_path / "whole.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        collect_command(folder, killed, n), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if recorded(killed).get("n_examples", 0) >= 10:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    at_kill = recorded(killed)
    assert not at_kill["complete"] and 10 <= at_kill["n_examples"] < n

    resumed = subprocess.run(
        collect_command(folder, killed, n), env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{n} examples" in resumed.stdout
    traced_now = int(re.search(r"\((\d+) examples traced now", resumed.stdout).group(1))
    assert traced_now == n - at_kill["n_examples"]  # the resumed run skipped what was stored
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocesses (OMP_NUM_THREADS=1): the same rounding
    try:
        run_collect(
            CollectConfig(
                model="gpt2-medium",
                model_path=str(folder),
                layer=1,
                limit=n,
                benchmark_options={"n_examples": n, "digits": 3},
                batch_size=3,
                chunk_rows=64,
                out=str(whole),
                progress=False,
            ),
            get_plugins(),
        )
    finally:
        torch.set_num_threads(threads)

    a, b = ActivationStore(killed), ActivationStore(whole)
    assert (
        a.complete
        and b.complete
        and (a.n_examples, a.n_tokens) == (b.n_examples, b.n_tokens) == (n, b.n_tokens)
    )
    assert np.array_equal(a.read_rows(0, a.n_tokens), b.read_rows(0, b.n_tokens))
    for name in ("token_ids", "example_ids", "positions"):
        assert np.array_equal(getattr(a, name), getattr(b, name))


def test_remote_collect_in_nnsight_local_mode_matches_local_collect(tiny_gpt2, tmp_path):
    folder, _ = tiny_gpt2
    local = run_collect(
        tiny_config(folder, tmp_path / "local.zarr", site="attn", dtype="float32"), get_plugins()
    )
    remote = run_collect(
        tiny_config(folder, tmp_path / "remote.zarr", site="attn", dtype="float32", remote=True),
        get_plugins(),
        remote_backend="local",
    )
    a, b = ActivationStore(local.path), ActivationStore(remote.path)
    assert b.attrs["model_dtype"] == "remote" and b.attrs["config"]["remote"] is True
    assert np.array_equal(a.token_ids, b.token_ids)
    assert relative_error(b.read_rows(0, b.n_tokens), a.read_rows(0, a.n_tokens)) < 1e-6


def test_non_finite_activations_are_refused_not_stored(tmp_path):
    loaded = tiny_loaded_model("llama-3-8b")
    with torch.no_grad():
        loaded.model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    folder = save_tiny_model(loaded, tmp_path / "nan-model")
    out = tmp_path / "acts.zarr"
    with pytest.raises(NonFiniteActivationsError, match="NaN"):
        run_collect(
            CollectConfig(
                model="llama-3-8b", model_path=str(folder), layer=1, limit=2, out=str(out), progress=False
            ),
            get_plugins(),
        )
    assert recorded(out)["n_examples"] == 0 and not recorded(out)["complete"]


@pytest.mark.slow
def test_smollm2_stored_rows_equal_a_per_example_forward(smollm2, tmp_path):
    config = CollectConfig(limit=4, batch_size=4, layer=15, out=str(tmp_path / "smol.zarr"), progress=False)
    summary = run_collect(config, get_plugins())
    store = ActivationStore(summary.path)
    assert store.attrs["model_revision"] == smollm2.revision and store.dtype == "float16"
    examples = list(get_plugins().benchmarks.get("arithmetic").examples("test", 4, 0))
    by_example = store_rows_by_example(store)
    for index, example in enumerate(examples):
        ids = encode_example(smollm2.tokenizer, example).input_ids
        acts, token_ids, _ = by_example[index]
        assert token_ids.tolist() == list(ids)
        # float16 storage: relative rounding 2**-11 per value
        assert relative_error(acts.astype(np.float32), reference_rows(smollm2, 15, "resid", ids)) < 2e-3


def test_sequences_longer_than_the_model_takes_keep_the_end_of_the_prompt(tiny_gpt2, tmp_path, bench_data):
    folder, loaded = tiny_gpt2
    config = tiny_config(
        folder,
        tmp_path / "logic.zarr",
        benchmark="logic",
        limit=2,
        benchmark_options={"data": str(bench_data / "logiqa")},
    )
    run_collect(config, get_plugins())
    store = ActivationStore(config.out)
    limit = loaded.model.config.n_positions
    examples = list(get_plugins().benchmarks.get("logic").examples("test", 2, 0, config.benchmark_options))
    for index, example in enumerate(examples):
        full = encode_example(loaded.tokenizer, example).input_ids
        assert len(full) > limit  # the case under test
        stored = store.token_ids[store.example_ids == index]
        assert stored.tolist() == list(encode_example(loaded.tokenizer, example, limit).input_ids)
        assert stored.tolist()[-3:] == list(full[-3:])


def test_bad_benchmark_data_fails_before_any_weights_load(tmp_path):
    from tests.cli_helpers import run_cli

    bad = tmp_path / "test.jsonl"
    bad.write_text('{"question": "q", "answer": "no final line"}\n')
    out = tmp_path / "never.zarr"
    for extra in ([], ["--data", str(bad)]):
        result = run_cli("collect", "--benchmark", "gsm8k", "--limit", "2", "--out", str(out), *extra)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and "Loading weights" not in result.stderr
        assert not out.exists()
    assert f"{bad}, line 1" in result.stderr
