"""Bad inputs a new user gives (issue 19): each is one line, exit code 2, before any work, never a
traceback: damaged store metadata, binary or absurdly nested files, /dev/null as data, a lone
surrogate in a data file, a model folder that would run code or unpickle weights, a missing GPU,
non-finite numbers in results files."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from scircuits.cli import main
from scircuits.store.synthetic import write_synthetic_store

GSM8K = Path(__file__).parent / "data" / "gsm8k"


def refused(args: list[str], capsys) -> str:
    """The one line ``scircuits ARGS`` refuses with (exit code 2)."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("Error:") and "Traceback" not in err, err
    return err


@pytest.fixture
def store(tmp_path) -> Path:
    return Path(write_synthetic_store(tmp_path / "s.zarr", n_examples=12, d_model=6, chunk_rows=16))


def truncate(path: Path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def test_a_truncated_array_metadata_file_is_one_line_in_inspect_and_train(store, tmp_path, capsys):
    truncate(store / "acts" / "zarr.json")
    assert "metadata of array 'acts' cannot be read" in refused(["inspect", str(store)], capsys)
    err = refused(["train", "--store", str(store), "--out", str(tmp_path / "sae"), "--no-progress"], capsys)
    assert "the store is damaged" in err


def test_inspect_exits_2_on_non_finite_values_as_its_help_says(store, capsys):
    import zarr

    zarr.open_group(store, mode="r+")["acts"][3, 2] = np.inf
    with pytest.raises(SystemExit) as exc:
        main(["inspect", str(store)])
    assert exc.value.code == 2 and "rows hold NaN or inf" in capsys.readouterr().out
    for extra in (["--json"], ["--fast"]):
        with pytest.raises(SystemExit) as exc:
            main(["inspect", str(store), *extra])
        assert exc.value.code == 2
    capsys.readouterr()


@pytest.mark.parametrize(
    "name,content,needle",
    [
        ("bin.toml", bytes(range(256)) * 4, "not UTF-8 text"),
        ("deep.toml", b"a = " + b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        ("deep.yaml", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_binary_or_deeply_nested_config_files(name, content, needle, tmp_path, capsys):
    path = tmp_path / name
    path.write_bytes(content)
    for command in (["train", "--store", "x"], ["run"], ["collect"]):
        assert needle in refused([*command, "--config", str(path)], capsys)
    assert "is not a regular file" in refused(["run", "--config", "/dev/null"], capsys)


def test_dev_null_or_an_empty_file_as_data_names_what_it_is(tmp_path, capsys):
    err = refused(
        ["collect", "--benchmark", "gsm8k", "--data", "/dev/null", "--out", str(tmp_path / "c")], capsys
    )
    assert "is not a regular file" in err and "does not exist" not in err
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    err = refused(
        ["collect", "--benchmark", "gsm8k", "--data", str(empty), "--out", str(tmp_path / "c")], capsys
    )
    assert "is empty" in err
    assert not (tmp_path / "c").exists()


def test_a_lone_surrogate_in_a_data_file_is_refused_before_any_weights_load(tmp_path, capsys, monkeypatch):
    from scircuits.platform.contract import models

    def no_loading(*args, **kwargs):
        raise AssertionError("weights loaded")

    monkeypatch.setattr(models.HFModelAdapter, "load", no_loading)
    data = tmp_path / "test.jsonl"
    data.write_text('{"question": "What is \\ud800 1+1?", "answer": "1+1=2 #### 2"}\n')
    for command in (["collect", "--out", str(tmp_path / "c")], ["run", "--out", str(tmp_path / "runs")]):
        err = refused([*command, "--benchmark", "gsm8k", "--data", str(data)], capsys)
        assert "lone surrogate" in err and "\\ud800" in err
    assert not (tmp_path / "c").exists()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    from scircuits.testing import save_tiny_model, tiny_loaded_model

    return save_tiny_model(tiny_loaded_model("smollm2-135m"), tmp_path_factory.mktemp("m") / "tiny")


def test_an_hf_folder_with_remote_code_or_pickled_weights_says_why_and_what_to_do(
    tiny_folder, tmp_path, capsys
):
    remote = tmp_path / "remote"
    shutil.copytree(tiny_folder, remote)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (remote / "config.json").write_text(json.dumps(config))
    (remote / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    err = refused(
        ["collect", "--model", f"hf:{remote}", "--limit", "2", "--out", str(tmp_path / "c")], capsys
    )
    assert "auto_map" in err and "never runs" in err and "trust_remote_code" in err

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_folder, pickled)
    for weights in pickled.glob("*.safetensors"):
        weights.unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    err = refused(
        ["collect", "--model", f"hf:{pickled}", "--limit", "2", "--out", str(tmp_path / "c")], capsys
    )
    assert "pytorch_model.bin" in err and "safetensors" in err and "unpickling" in err
    assert not (tmp_path / "c").exists()


def test_an_hf_folder_with_truncated_weights_is_one_line(tiny_folder, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_folder, damaged)
    [weights] = damaged.glob("*.safetensors")
    weights.write_bytes(weights.read_bytes()[:3000])
    err = refused(
        ["collect", "--model", f"hf:{damaged}", "--limit", "2", "--out", str(tmp_path / "c")], capsys
    )
    assert "the model's weights cannot be read" in err and "damaged or incomplete" in err
    assert not (tmp_path / "c").exists()


def test_synth_train_on_a_missing_gpu_is_one_line(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    err = refused(
        ["synth", "train", "--task", "addition", "--device", "cuda", "--out", str(tmp_path / "m")], capsys
    )
    assert "no CUDA GPU" in err and not (tmp_path / "m").exists()


def test_train_with_one_missing_store_of_two_names_it_without_the_config(store, tmp_path, capsys):
    missing = tmp_path / "missing.zarr"
    err = refused(
        ["train", "--store", str(store), "--store", str(missing), "--out", str(tmp_path / "o")], capsys
    )
    assert str(missing) in err and "{" not in err and "hparams" not in err


def test_results_json_never_holds_a_non_json_number():
    from scircuits.platform.contract.jsonvalues import dumps

    text = dumps({"a": math.nan, "b": [1.0, math.inf, np.float32("nan")], "c": np.array([1.0, -np.inf])})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON")) == {
        "a": None,
        "b": [1.0, None, None],
        "c": [1.0, None],
    }


def gate_context(training_metrics: dict, site_error: float = 0.9):
    from types import SimpleNamespace

    from scircuits.platform.config import AblateConfig

    config = AblateConfig(sae="runs/x/sae", model="smollm2-135m")
    return SimpleNamespace(config=config, sae_training_metrics=training_metrics, layer=15), {
        "relative_error": site_error
    }


def test_the_gate_calls_an_sae_that_misfits_its_own_store_undertrained():
    from scircuits.plugins.analyses.baseline import ReconstructionGateError, reconstruction_gate

    context, metrics = gate_context({"relative_error": 0.6, "fvu": 0.61})
    with pytest.raises(ReconstructionGateError, match="undertrained: raise --train-tokens") as exc:
        reconstruction_gate(context, metrics, recovered=0.395, ce_gap=2.0)
    assert "--layer" not in str(exc.value) and "FVU 0.61" in str(exc.value)
    # fitted on its own store, misfit here: the layer, site or model is blamed, as before
    context, metrics = gate_context({"relative_error": 0.01, "fvu": 0.02})
    with pytest.raises(ReconstructionGateError, match="--layer") as exc:
        reconstruction_gate(context, metrics, recovered=0.395, ce_gap=2.0)
    assert "undertrained" not in str(exc.value)


def test_an_sae_too_large_for_the_machine_is_refused_before_any_work(store, tmp_path, monkeypatch, capsys):
    from scircuits.platform.train import size

    monkeypatch.setattr(size, "machine_bytes", lambda: 2**30)  # a 1 GiB machine
    err = refused(["run", "--expansion", "64", "--out", str(tmp_path / "runs")], capsys)
    assert "--expansion 64" in err and "GiB" in err and not (tmp_path / "runs").exists()
    err = refused(["train", "--store", str(store), "--expansion", "256", "--batch-size", "2**20"], capsys)
    assert "not a valid integer" in err
    monkeypatch.setattr(size, "machine_bytes", lambda: 2**10)
    err = refused(
        ["train", "--store", str(store), "--expansion", "256", "--out", str(tmp_path / "sae")], capsys
    )
    assert "--expansion 256" in err and not (tmp_path / "sae").exists()


def test_deeply_nested_json_in_a_data_file_an_sae_config_or_an_option(store, tmp_path, capsys):
    deep = "[" * 100_000 + "]" * 100_000
    data = tmp_path / "test.jsonl"
    data.write_text(deep + "\n")
    err = refused(
        ["collect", "--benchmark", "gsm8k", "--data", str(data), "--out", str(tmp_path / "c")], capsys
    )
    assert "nested too deeply" in err
    sae = tmp_path / "sae"
    sae.mkdir()
    (sae / "cfg.json").write_text(deep)
    (sae / "sae_weights.safetensors").write_bytes(b"")
    err = refused(
        ["ablate", "--sae", str(sae), "--model", "smollm2-135m", "--out", str(tmp_path / "a")], capsys
    )
    assert "nested too deeply" in err
    err = refused(["train", "--store", str(store), "--sae-option", f"k={deep}"], capsys)
    assert "nested too deeply" in err


@pytest.mark.parametrize(
    "args",
    [
        ["collect", "--out", "memory://acts.zarr", "--limit", "2"],
        ["train", "--store=memory://acts.zarr", "--out", "sae"],
        ["run", "--out", "memory://runs"],
    ],
)
def test_a_memory_url_on_the_command_line_is_refused(args, capsys):
    err = refused(args, capsys)
    assert "memory://" in err and "lives inside one Python process" in err and "s3://" in err


@pytest.mark.parametrize(
    "args",
    [
        ["circuit", "--sae", "a", "--sae", "b", "--out", "s3://bucket/circuit"],
        ["dashboard", "s3://bucket/run"],
        ["dashboard", ".", "--out", "s3://bucket/site"],
        ["compare", "s3://bucket/a", "s3://bucket/b"],
        ["report", ".", "--out", "s3://bucket/report"],
    ],
)
def test_commands_of_local_folders_refuse_a_url_in_one_line(args, capsys):
    err = refused(args, capsys)
    assert "reads and writes local folders only" in err and "s3://bucket/" in err


@pytest.mark.parametrize(
    "args",
    [
        ["collect", "--model", "smollm2-135m", "--layer", "1", "--out", "{url}"],
        ["train", "--store", "{store}", "--out", "{url}"],
        ["train", "--store", "{url}", "--out", "{tmp}/sae"],
        ["ablate", "--model", "smollm2-135m", "--sae", "{tmp}/sae", "--out", "{url}"],
        ["ablate", "--model", "smollm2-135m", "--sae", "{url}", "--out", "{tmp}/a"],
        ["run", "--model", "smollm2-135m", "--layer", "1", "--out", "{url}"],
        ["circuit", "--model", "smollm2-135m", "--sae", "{tmp}/sae", "--out", "{url}"],
        ["inspect", "{url}"],
    ],
)
@pytest.mark.parametrize(
    "url, said",
    [
        ("foo://x", "foo:// URLs are not supported"),
        ("hf://datasets/x/y", "hf:// URLs are not supported"),
        ("s3://", "the URL names no location"),
    ],
)
def test_an_unusable_url_is_one_line_naming_it_and_what_is_supported(
    args, url, said, store, tmp_path, capsys
):
    (tmp_path / "sae").mkdir()
    filled = [a.format(url=url, store=store, tmp=tmp_path) for a in args]
    err = refused(filled, capsys)
    assert url in err and said in err, err


def test_the_api_refuses_an_unusable_url_with_a_config_error(tmp_path):
    from scircuits import CollectConfig, ConfigError

    with pytest.raises(ConfigError, match="foo:// URLs are not supported"):
        CollectConfig(model="smollm2-135m", layer=1, out="foo://x")
    with pytest.raises(ConfigError, match="names no location"):
        CollectConfig(model="smollm2-135m", layer=1, out="s3://")


def test_every_device_of_a_list_is_checked_before_the_first_job_trains(store, tmp_path, capsys):
    out = tmp_path / "sae"
    err = refused(
        [
            "train",
            "--store",
            str(store),
            "--sae",
            "topk,relu",
            "--device",
            "cpu,bogus",
            "--out",
            str(out),
            "--no-progress",
        ],
        capsys,
    )
    assert "--device bogus: unknown device" in err and "training jobs failed" not in err, err
    assert not out.exists()  # no job ran


@pytest.mark.parametrize(
    "args",
    [
        ["collect", "--model", "smollm2-135m", "--layers", "0,,1", "--out", "{tmp}/c"],
        ["run", "--model", "smollm2-135m", "--layer", "1", "--top-k", "1,,2", "--out", "{tmp}/r"],
        [
            "circuit",
            "--model",
            "smollm2-135m",
            "--sae",
            "{tmp}/a",
            "--sae",
            "{tmp}/b",
            "--sites",
            "resid0,,resid1",
            "--out",
            "{tmp}/k",
        ],
        ["train", "--store", "{tmp}/s.zarr", "--sae", "topk,,relu", "--out", "{tmp}/t"],
    ],
)
def test_an_empty_item_in_a_comma_list_is_one_line(args, store, tmp_path, capsys):
    err = refused([a.format(tmp=tmp_path) for a in args], capsys)
    assert "has an empty item between commas" in err, err
