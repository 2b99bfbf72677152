"""Fault injection: crashes between every write and rename of the training state, kill -9 at seeded
random points of training (a subprocess), an injected ENOSPC, and truncated or missing files of each
artifact. Seeded and small (tiny synthetic stores), so it runs in CI.

``KILL_POINTS`` counts every kill or crash point the module tries; the README quotes it.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import scircuits.platform.common.artifacts as artifacts
import scircuits.platform.train.checkpoint as ckpt
from scircuits.platform.common.artifacts import ArtifactError
from scircuits.platform.config import TrainConfig
from scircuits.platform.contract.errors import ConfigError, DataFormatError
from scircuits.platform.manager.plugin_set import get_plugins
from scircuits.platform.train.training import train as train_with
from scircuits.store.synthetic import write_synthetic_store

SEED = 20261126
D_MODEL = 16
PROJECT_ROOT = Path(__file__).resolve().parents[1]


# Every kill, crash or full-disk point a test tried, e.g. "run: event 41 of 71"; printed at the end.
TRIED: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def report_tried_points(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not TRIED:
        return
    kills = [point for point in TRIED if "full disk" not in point]
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line(
            f"fault suite: {len(kills)} kill or crash points, {len(TRIED) - len(kills)} full-disk points"
        )
        for point in TRIED:
            reporter.write_line(f"  {point}")


def train(config, **options):
    return train_with(config, get_plugins(), **options)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "acts.zarr"
    return write_synthetic_store(path, n_examples=120, d_model=D_MODEL, dtype="float32", chunk_rows=128)


def config(store, out, **overrides) -> TrainConfig:
    values = dict(
        store=str(store),
        sae="topk",
        hparams={"k": 4},
        expansion=2,
        batch_size=32,
        epochs=1,
        lr=3e-3,
        warmup_steps=3,
        eval_every=100,
        log_every=5,
        eval_tokens=256,
        checkpoint_every=4,
        out=str(out),
        progress=False,
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def straight(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "sae"
    return train(config(store, out)).joinpath(ckpt.WEIGHTS_FILE).read_bytes()


class SimulatedKill(BaseException):
    """Raised in place of a write or rename: the process 'dies' there (nothing after it runs)."""


# Every filesystem step of save_training_state: the tensors, the metadata, the rename of the old state
# aside, the rename of the staging folder into place, the removal of the old state.
STATE_STEPS = ("save_file", "write_text", "replace_old", "replace_new", "rmtree_old")


def crash_at(monkeypatch, step: str, on_save: int) -> None:
    """Make the ``on_save``-th save_training_state die at ``step``."""
    saves = {"n": 0}
    original_save = ckpt.save_training_state

    def counting_save(*args, **kwargs):
        saves["n"] += 1
        return original_save(*args, **kwargs)

    def armed() -> bool:
        return saves["n"] == on_save

    import safetensors.torch as st

    real_save_file, real_write_text = st.save_file, Path.write_text
    real_replace, real_rmtree = os.replace, shutil.rmtree
    replaces = {"n": 0}

    def save_file(*args, **kwargs):
        if armed() and step == "save_file":
            raise SimulatedKill(step)
        return real_save_file(*args, **kwargs)

    def write_text(self, *args, **kwargs):
        if armed() and step == "write_text" and self.name == "state.json":
            raise SimulatedKill(step)
        return real_write_text(self, *args, **kwargs)

    def replace(src, dst):
        if armed() and Path(dst).name.startswith((".training_state.old", "training_state")):
            replaces["n"] += 1
            if (step, Path(dst).name.startswith(".")) in (("replace_old", True), ("replace_new", False)):
                raise SimulatedKill(step)
        return real_replace(src, dst)

    def rmtree(path, *args, **kwargs):
        if armed() and step == "rmtree_old" and ".training_state.old" in str(path):
            raise SimulatedKill(step)
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_training_state", counting_save)
    monkeypatch.setattr("scircuits.platform.train.training.ckpt.save_training_state", counting_save)
    monkeypatch.setattr(st, "save_file", save_file)
    monkeypatch.setattr(Path, "write_text", write_text)
    monkeypatch.setattr(artifacts.os, "replace", replace)
    monkeypatch.setattr(artifacts.shutil, "rmtree", rmtree)


@pytest.mark.parametrize("step", STATE_STEPS)
def test_a_crash_between_any_write_and_rename_of_the_training_state_resumes_bit_identical(
    store, tmp_path, straight, monkeypatch, step
):
    out = tmp_path / "sae"
    with monkeypatch.context() as patch:
        crash_at(patch, step, on_save=2)  # the second save replaces an existing state
        with pytest.raises(SimulatedKill):
            train(config(store, out))
    TRIED.append(f"training-state crash: {step}")
    state = ckpt.load_training_state(out)
    assert state is not None, "a whole state (old or new) must survive"
    assert state[1]["step"] in (4, 8)
    train(config(store, out, resume=True))
    assert (out / ckpt.WEIGHTS_FILE).read_bytes() == straight


KILL_CHILD = textwrap.dedent(
    """
    import os, random, signal, sys, json
    import torch
    torch.set_num_threads(1)
    from scircuits.platform.config import TrainConfig
    import scircuits.platform.train.training as training
    values = json.loads(sys.argv[1])
    kill_after = int(sys.argv[2])
    calls = {"n": 0}
    real_step = training.SAETrainer.train_step
    def step(self, x):
        calls["n"] += 1
        if calls["n"] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(self, x)
    training.SAETrainer.train_step = step
    from scircuits.platform.manager.plugin_set import get_plugins
    training.train(TrainConfig(**values), get_plugins())
    """
)


def run_train_child(values: dict, kill_after: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{PROJECT_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(
        [sys.executable, "-c", KILL_CHILD, json.dumps(values), str(kill_after)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


KILL_TRAIN_POINTS = sorted(random.Random(SEED).sample(range(2, 15), 3))


@pytest.mark.parametrize("kill_after", KILL_TRAIN_POINTS)
def test_kill_9_during_training_then_resume_is_bit_identical(store, tmp_path, straight, kill_after):
    out = tmp_path / "sae"
    values = config(store, out).model_dump(mode="json")
    killed = run_train_child(values, kill_after)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    TRIED.append(f"train kill -9: step {kill_after}")
    assert not ckpt.is_complete(out)
    resume = ckpt.has_training_state(out)
    train(config(store, out, resume=resume))
    assert (out / ckpt.WEIGHTS_FILE).read_bytes() == straight


def test_enospc_while_saving_the_state_is_one_line_and_keeps_the_old_state(store, tmp_path, monkeypatch):
    out = tmp_path / "sae"
    train(config(store, out), stop_after_steps=4)
    before = (out / ckpt.STATE_WEIGHTS_FILE).read_bytes()
    import safetensors.torch as st

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(st, "save_file", full)
    with pytest.raises(ArtifactError, match="no space left on the device") as caught:
        train(config(store, out, resume=True))
    assert "\n" not in str(caught.value)
    assert (out / ckpt.STATE_WEIGHTS_FILE).read_bytes() == before


def test_train_refuses_a_folder_of_user_files(store, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(ArtifactError, match="did not write"):
        train(config(store, out))
    assert (out / "notes.txt").read_text() == "precious"


def test_train_moves_aside_a_checkpoint_of_other_settings(store, tmp_path):
    out = tmp_path / "sae"
    train(config(store, out))
    old = (out / ckpt.WEIGHTS_FILE).read_bytes()
    train(config(store, out, seed=3))
    [aside] = tmp_path.glob("sae.superseded-*")
    assert (aside / ckpt.WEIGHTS_FILE).read_bytes() == old
    assert ckpt.is_complete(out, config(store, out, seed=3).config_hash())


def test_a_second_trainer_on_one_folder_is_refused(store, tmp_path):
    out = tmp_path / "sae"
    with (
        artifacts.FolderLock(out, "SAE checkpoint"),
        pytest.raises(ArtifactError, match="another scircuits process"),
    ):
        train(config(store, out))


def test_a_rerun_without_resume_does_not_discard_a_saved_state(store, tmp_path):
    out = tmp_path / "sae"
    train(config(store, out), stop_after_steps=4)
    with pytest.raises(ConfigError, match="add --resume"):
        train(config(store, out))
    assert ckpt.has_training_state(out)


def test_a_nan_loss_stops_training_naming_the_batch(store, tmp_path, monkeypatch):
    import scircuits.platform.train.training as training

    real = training.SAETrainer.train_step

    def poisoned(self, x):
        if self.step == 2:
            x = x.clone()
            x[0, 0] = float("nan")
        return real(self, x)

    monkeypatch.setattr(training.SAETrainer, "train_step", poisoned)
    with pytest.raises(training.NonFiniteTrainingError, match="training batch 2 of epoch 0") as caught:
        train(config(store, tmp_path / "sae"))
    assert "\n" not in str(caught.value)
    assert not ckpt.is_complete(tmp_path / "sae")


@pytest.mark.parametrize("damage", ["truncate", "disguise", "missing"])
def test_a_damaged_checkpoint_gives_a_one_line_error(store, tmp_path, damage):
    out = train(config(store, tmp_path / "sae"))
    weights = out / ckpt.WEIGHTS_FILE
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "disguise":
        weights.write_bytes(b"PK\x03\x04 this is a zip, not safetensors")
    else:
        weights.unlink()
    with pytest.raises(DataFormatError, match=str(weights.name)) as caught:
        ckpt.load_sae(out, get_plugins())
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("damage", ["truncate", "missing"])
def test_a_damaged_scircuits_json_is_redone_not_trusted(store, tmp_path, damage):
    out = train(config(store, tmp_path / "sae"))
    meta = out / ckpt.META_FILE
    if damage == "truncate":
        meta.write_text(meta.read_text()[:20])
    else:
        meta.unlink()
    assert not ckpt.is_complete(out, config(store, out).config_hash())
    train(config(store, out))
    assert ckpt.is_complete(out, config(store, out).config_hash())


# -- ablate --out and --store ---------------------------------------------------------------------


def ablate_config(out, **overrides):
    from scircuits.platform.config import AblateConfig

    return AblateConfig(**{"sae": "", "out": str(out), "progress": False, **overrides})


def run_ablate(config):
    from scircuits.platform.causal.stage import run_ablate as run
    from scircuits.platform.manager.plugin_set import get_plugins

    return run(config, get_plugins())


def test_ablate_refuses_a_folder_of_user_files_before_any_work(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.json").write_text('{"mine": true}')
    with pytest.raises(ArtifactError, match="did not write") as caught:
        run_ablate(ablate_config(out))
    assert "\n" not in str(caught.value)
    assert (out / "results.json").read_text() == '{"mine": true}'


def test_ablate_refused_for_its_inputs_leaves_results_of_other_settings_in_place(tmp_path):
    out = tmp_path / "causal"
    out.mkdir()
    (out / "results.json").write_text('{"config_hash": "older"}')
    with pytest.raises(ConfigError, match="needs --sae"):  # results are claimed only once there are new ones
        run_ablate(ablate_config(out))
    assert not list(tmp_path.glob("causal.superseded-*"))
    assert json.loads((out / "results.json").read_text()) == {"config_hash": "older"}


def test_a_second_ablate_on_one_folder_is_refused(tmp_path):
    out = tmp_path / "causal"
    with (
        artifacts.FolderLock(out, "causal results"),
        pytest.raises(ArtifactError, match="another scircuits process"),
    ):
        run_ablate(ablate_config(out))


@pytest.mark.parametrize(
    "where, reason",
    [("under_a_file", "a part of the path is a file"), ("too_long", "the path is too long")],
)
def test_an_unwritable_out_is_refused_before_any_work(tmp_path, where, reason):
    if where == "under_a_file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "causal"
    else:
        out = tmp_path / ("x" * 300)
    with pytest.raises(ArtifactError, match=reason) as caught:
        run_ablate(ablate_config(out))
    assert "choose another --out" in str(caught.value)


def test_enospc_while_writing_results_is_one_line(tmp_path, monkeypatch):
    import scircuits.platform.causal.stage as stage

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    fake_inputs = stage.AblateInputs(None, None, {}, [], 0)
    monkeypatch.setattr(stage, "load_inputs", lambda config, plugins, loaded: fake_inputs)
    monkeypatch.setattr(
        stage, "run_study", lambda *args: (type("R", (), {"n_examples": 0, "n_tokens": 0})(), [])
    )
    monkeypatch.setattr(stage, "provenance", lambda *args: {})
    monkeypatch.setattr(stage, "write_study", full)
    with pytest.raises(ArtifactError, match="no space left on the device") as caught:
        run_ablate(ablate_config(tmp_path / "causal"))
    assert "\n" not in str(caught.value)


def test_ablate_store_must_match_the_sae(tmp_path):
    from scircuits.platform.causal.stage import check_store_matches_sae
    from scircuits.store.synthetic import synthetic_attrs

    attrs = {**synthetic_attrs(), "model": "smollm2-135m", "layer": 3, "site": "resid"}
    path = write_synthetic_store(tmp_path / "s.zarr", n_examples=2, d_model=4, attrs=attrs)
    info = {"meta": {"store": {"attrs": {"model": "smollm2-135m", "layer": 15, "site": "resid"}}}}
    with pytest.raises(ConfigError, match="layer: store 3, SAE 15"):
        check_store_matches_sae(path, "sae", info)
    info["meta"]["store"]["attrs"]["layer"] = 3
    check_store_matches_sae(path, "sae", info)  # the matching store is accepted
    published = {"meta": {}, "hook_name": "blocks.2.hook_mlp_out"}  # its hook decides (layer, site)
    with pytest.raises(ConfigError, match="layer: store 3, SAE 2; site: store 'resid', SAE 'mlp'"):
        check_store_matches_sae(path, "hf:org/s", published, hooked=(2, "mlp"))
    check_store_matches_sae(path, "hf:org/s", published, hooked=(3, "resid"))


# -- data files: content hash, empty, not UTF-8, a bad line far in --------------------------------


def collect_config(data, out, **overrides):
    from scircuits.platform.config import CollectConfig

    return CollectConfig(
        **{
            "benchmark": "gsm8k",
            "benchmark_options": {"data": str(data)},
            "split": "test",
            "out": str(out),
            "progress": False,
            **overrides,
        }
    )


def collect_without_weights(config, monkeypatch):
    """run_collect, failing the test if it gets as far as loading weights."""
    import scircuits.platform.collect.collection as collection
    from scircuits.platform.manager.plugin_set import get_plugins

    adapter = get_plugins().models.get(config.with_plugin_defaults(get_plugins()).model)
    monkeypatch.setattr(type(adapter), "check_weights", lambda *a, **k: pytest.fail("weights were loaded"))
    return collection.run_collect(config, get_plugins())


@pytest.fixture
def gsm8k_file(bench_data, tmp_path):
    path = tmp_path / "test.jsonl"
    shutil.copy(bench_data / "gsm8k" / "test.jsonl", path)
    return path


def test_an_edited_data_file_changes_the_data_hash(gsm8k_file):
    from scircuits.platform.collect.datahash import data_sha256

    before = data_sha256({"data": str(gsm8k_file)})
    assert before == data_sha256({"data": str(gsm8k_file)}) and data_sha256({}) is None
    gsm8k_file.write_text(gsm8k_file.read_text().replace("16 eggs", "17 eggs"))
    assert data_sha256({"data": str(gsm8k_file)}) != before


def test_a_store_of_an_edited_data_file_is_not_already_complete(gsm8k_file, tmp_path):
    import scircuits.platform.collect.collection as collection
    from scircuits.store import StoreMismatchError
    from scircuits.store.synthetic import synthetic_attrs

    config = collect_config(gsm8k_file, tmp_path / "s.zarr", layer=3)
    attrs = {
        **synthetic_attrs(),
        "config": config.identity(),
        "config_hash": config.config_hash(),
        "data_sha256": collection.data_sha256(config.benchmark_options),
    }
    write_synthetic_store(config.out, n_examples=2, d_model=4, attrs=attrs)
    assert collection._check_existing_store(config).already_complete
    gsm8k_file.write_text(gsm8k_file.read_text().replace("16 eggs", "17 eggs"))
    with pytest.raises(StoreMismatchError, match="changed since the store was collected"):
        collection._check_existing_store(config)


def test_an_empty_data_file_is_an_error_before_any_work(tmp_path, monkeypatch):
    empty = tmp_path / "test.jsonl"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="holds no examples") as caught:
        collect_without_weights(collect_config(empty, tmp_path / "s.zarr"), monkeypatch)
    assert str(empty) in str(caught.value) and not (tmp_path / "s.zarr").exists()


def test_a_non_utf8_data_file_names_file_and_line(gsm8k_file, tmp_path, monkeypatch):
    lines = gsm8k_file.read_bytes().splitlines(keepends=True)
    lines[6] = lines[6].replace(b"a", b"\xff", 1)
    gsm8k_file.write_bytes(b"".join(lines))
    with pytest.raises(DataFormatError, match="line 7: not UTF-8") as caught:
        collect_without_weights(collect_config(gsm8k_file, tmp_path / "s.zarr"), monkeypatch)
    assert str(gsm8k_file) in str(caught.value)


def test_a_bad_line_far_into_the_data_file_stops_before_the_weights(gsm8k_file, tmp_path, monkeypatch):
    with open(gsm8k_file, "a") as fh:
        fh.write("{not json\n")
    n_lines = len(gsm8k_file.read_text().splitlines())
    with pytest.raises(DataFormatError, match=f"line {n_lines}"):
        collect_without_weights(collect_config(gsm8k_file, tmp_path / "s.zarr"), monkeypatch)
    assert not (tmp_path / "s.zarr").exists()


def test_k_larger_than_d_sae_is_a_one_line_error(store, tmp_path):
    with pytest.raises(ConfigError, match="k=1000 is larger than the SAE's 32 latents"):
        train(config(store, tmp_path / "sae", hparams={"k": 1000}))


def test_top_k_larger_than_d_sae_is_an_error_not_a_silent_drop(store, tmp_path, monkeypatch):
    import scircuits.platform.causal.stage as stage
    from scircuits.platform.manager.plugin_set import get_plugins

    sae_dir = train(config(store, tmp_path / "sae"))
    monkeypatch.setattr(stage, "check_weights_available", lambda *a: None)
    cfg = ablate_config(tmp_path / "causal", sae=str(sae_dir), top_k=[1, 64])
    with pytest.raises(ConfigError, match=r"--top-k 64: the SAE .* has only 32 latents"):
        stage.load_inputs(cfg.with_plugin_defaults(get_plugins()), get_plugins())


# -- config files: no silent misreadings ----------------------------------------------------------


@pytest.mark.parametrize("stage", ["collect", "run"])
def test_limit_true_is_not_one(stage):
    from scircuits.platform.config import CollectConfig, RunConfig

    model = CollectConfig if stage == "collect" else RunConfig
    with pytest.raises(ConfigError, match="limit must be a number, got True"):
        model.validated({"limit": True})


def test_a_top_level_key_beside_a_stage_table_is_an_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('lr = 0.01\n[train]\nsae = "topk"\n')
    with pytest.raises(
        ConfigError, match=r"top-level setting\(s\) lr would be ignored .* move them into \[train\]"
    ):
        TrainConfig.from_sources(path)


def test_an_sae_hyperparameter_at_the_top_of_train_points_to_hparams(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nk = 16\n")
    with pytest.raises(ConfigError, match=r"hparams = \{k = 16\}.*--sae-option k=16"):
        TrainConfig.from_sources(path)


@pytest.mark.parametrize("device, message", [("tpu", "unknown device"), ("cuda", "no CUDA GPU")])
def test_an_unusable_device_is_a_one_line_error_before_any_work(store, tmp_path, device, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match=message):
        train(config(store, tmp_path / "sae", device=device))
    with pytest.raises(ConfigError, match=message):
        run_ablate(ablate_config(tmp_path / "causal", device=device))
    assert not (tmp_path / "sae").exists() and not (tmp_path / "causal").exists()


# -- kill -9 during collect (a tiny GPT-2 from a folder, as in test_collect) -----------------------

COLLECT_N = 150
KILL_COLLECT_POINTS = sorted(random.Random(SEED + 1).sample(range(5, COLLECT_N - 20), 2))


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """A tiny GPT-2 folder, and the store of an uninterrupted collection (in a subprocess, as the
    killed ones, so the rounding is the same)."""
    from scircuits.testing import save_tiny_model, tiny_loaded_model
    from tests.test_collect import collect_command

    root = tmp_path_factory.mktemp("collect")
    folder = save_tiny_model(tiny_loaded_model("gpt2-medium", seed=11), root / "model")
    whole = root / "whole.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(collect_command(folder, whole, COLLECT_N), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return folder, whole


@pytest.mark.parametrize("kill_at", KILL_COLLECT_POINTS)
def test_kill_9_during_collect_then_resume_equals_the_uninterrupted_store(collected, tmp_path, kill_at):
    import time

    import numpy as np

    from scircuits.store import ActivationStore
    from tests.test_collect import collect_command, recorded

    folder, whole = collected
    killed = tmp_path / "killed.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = collect_command(folder, killed, COLLECT_N)
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300  # generous: a loaded CI machine is slow
    while time.monotonic() < deadline and process.poll() is None:
        if recorded(killed).get("n_examples", 0) >= kill_at:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    process.wait(timeout=300)
    assert process.returncode == -signal.SIGKILL, "the collection ended before the kill point"
    TRIED.append(f"collect kill -9: after {kill_at} examples")
    rerun_here(command[3:])
    a, b = ActivationStore(killed), ActivationStore(whole)
    assert a.complete and (a.n_examples, a.n_tokens) == (b.n_examples, b.n_tokens)
    assert np.array_equal(a.read_rows(0, a.n_tokens), b.read_rows(0, b.n_tokens))
    assert np.array_equal(a.example_ids, b.example_ids) and np.array_equal(a.token_ids, b.token_ids)


def test_a_truncated_store_zarr_json_in_collect_is_a_one_line_error_before_the_weights(tmp_path, monkeypatch):
    from scircuits.store.errors import DamagedStoreError

    out = tmp_path / "s.zarr"
    write_synthetic_store(out, n_examples=3, d_model=4)
    zarr_json = out / "zarr.json"
    zarr_json.write_text(zarr_json.read_text()[:40])
    damaged = zarr_json.read_text()
    with pytest.raises(DamagedStoreError, match=r"zarr\.json cannot be read") as caught:
        collect_without_weights(
            collect_config(None, out, benchmark="arithmetic", benchmark_options={}), monkeypatch
        )
    assert "\n" not in str(caught.value) and zarr_json.read_text() == damaged


def test_enospc_while_writing_the_checkpoint_is_one_line(store, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "write_tensors_atomic", full)
    with pytest.raises(
        ArtifactError, match=r"cannot write the checkpoint \(no space left on the device"
    ) as caught:
        train(config(store, tmp_path / "sae"))
    assert "\n" not in str(caught.value) and not ckpt.is_complete(tmp_path / "sae")


def test_an_empty_failed_collection_does_not_block_the_corrected_command(tmp_path, monkeypatch):
    import scircuits.platform.collect.collection as collection
    from scircuits.store import ActivationStoreWriter

    first = collect_config(None, tmp_path / "s.zarr", benchmark="arithmetic", benchmark_options={}, limit=5)
    from scircuits.store.synthetic import synthetic_attrs

    attrs = {**synthetic_attrs(), "config": first.identity(), "config_hash": first.config_hash()}
    ActivationStoreWriter.open(first.out, attrs, d_model=4).close(complete=False)  # failed at once
    corrected = first.model_copy(update={"limit": 3})
    assert collection._check_existing_store(corrected) is None  # not refused
    [aside] = tmp_path.glob("s.zarr.superseded-*")
    assert (aside / "zarr.json").is_file() and not (tmp_path / "s.zarr").exists()


# -- kill -9 at seeded points of `ablate` and `run` (a tiny SmolLM2-shaped model from a folder) ----
#
# The child counts events: every os.replace (each atomic publish of every artifact), every training
# step, and every pass of the model below and above the spliced site (the ablation study's work). An
# uninterrupted child reports how many events it saw; a killed child SIGKILLs itself just before the
# N-th, for N drawn (seeded) from that range. The rerun must end with the uninterrupted artifacts.

EVENT_CHILD = textwrap.dedent(
    """
    import atexit, os, signal, sys
    import torch
    torch.set_num_threads(1)
    kill_at, count_file = int(sys.argv[1]), sys.argv[2]
    events = {"n": 0}

    def event():
        events["n"] += 1
        if events["n"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def counted(function):
        def wrapper(*args, **kwargs):
            event()
            return function(*args, **kwargs)
        return wrapper

    os.replace = counted(os.replace)
    import scircuits.platform.train.training as training
    from scircuits.platform.model.splice import SplitModel
    training.SAETrainer.train_step = counted(training.SAETrainer.train_step)
    SplitModel.lower = counted(SplitModel.lower)
    SplitModel._upper_mode = counted(SplitModel._upper_mode)
    if os.environ.get("SC_COUNT_SYNTH"):  # synth train: every batch (training steps and evaluations)
        import scircuits.platform.groundtruth.training as synth
        synth.batch_tensors = counted(synth.batch_tensors)
    atexit.register(lambda: open(count_file, "w").write(str(events["n"])))
    from scircuits.cli import main
    main(sys.argv[3:])
    """
)

TINY_RUN_FLAGS = ["--limit", "6", "--top-k", "1,2", "--random-controls", "1", "--exact-top", "1"]
TINY_RUN_FLAGS += ["--bootstrap", "20", "--faithfulness-n", "1", "--no-progress"]
KILL_RUN_POINTS = 3
KILL_ABLATE_POINTS = 2
# Where in each command's events the kills fall, as fractions drawn once from the seed.
_fractions = random.Random(SEED + 2)
# One point in each equal share of the events (stratified), so the points spread over the stages.
RUN_KILL_FRACTIONS = [round((i + _fractions.random()) / KILL_RUN_POINTS, 3) for i in range(KILL_RUN_POINTS)]
ABLATE_KILL_FRACTIONS = [
    round((i + _fractions.random()) / KILL_ABLATE_POINTS, 3) for i in range(KILL_ABLATE_POINTS)
]


def event_child(
    argv: list[str], kill_at: int, count_file: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        **(extra_env or {}),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": f"{PROJECT_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    return subprocess.run(
        [sys.executable, "-c", EVENT_CHILD, str(kill_at), str(count_file), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture(scope="module")
def tiny_smollm(tmp_path_factory):
    from scircuits.testing import save_tiny_model, tiny_loaded_model

    return save_tiny_model(tiny_loaded_model("smollm2-135m"), tmp_path_factory.mktemp("smollm") / "model")


def run_argv(model: Path, out: Path) -> list[str]:
    return [
        *("run", "--model", f"hf:{model}", "--layer", "2", "--collect-limit", "16", "--train-tokens"),
        *("1500", "--train-batch-size", "128", "--train-checkpoint-every", "2", "--out", str(out)),
        *TINY_RUN_FLAGS,
    ]


def counted_run(argv: list[str], where: Path, extra_env: dict[str, str] | None = None) -> int:
    """Run ``argv`` uninterrupted in a child; the number of events it saw."""
    done = event_child(argv, 0, where / "events", extra_env)
    assert done.returncode == 0, done.stderr[-3000:]
    return int((where / "events").read_text())


def kill_then_rerun(
    argv: list[str],
    kill_at: int,
    where: Path,
    folder: Path,
    extra_env: dict[str, str] | None = None,
    rerun_in_child: bool = False,
) -> None:
    """Kill the command at its ``kill_at``-th event, check the lock it held is free, rerun it (in a
    child like the uninterrupted one when its floating-point sums depend on the process' BLAS threads)."""
    killed = event_child(argv, kill_at, where / "killed-events", extra_env)
    assert killed.returncode == -signal.SIGKILL, f"ended before event {kill_at}: {killed.stderr[-2000:]}"
    started = [
        line.split("]")[1].split(":")[0].strip() for line in killed.stderr.splitlines() if ": start" in line
    ]
    TRIED.append(f"{argv[0]} kill -9: event {kill_at}{f' in {started[-1]}' if started else ''}")
    with artifacts.FolderLock(folder):  # the dead process's lock does not block anyone
        pass
    if rerun_in_child:
        done = event_child(argv, 0, where / "rerun-events", extra_env)
        assert done.returncode == 0, done.stderr[-3000:]
    else:
        rerun_here(argv)


def rerun_here(argv: list[str]) -> None:
    """The same command again, as a user reruns it; in this process, which has torch loaded already
    (one thread, as the children)."""
    from scircuits.cli import main

    main(argv)


VOLATILE_RESULT_FIELDS = ("provenance", "wall_seconds")


def comparable_results(folder: Path) -> dict:
    data = json.loads((folder / "results.json").read_text())
    config = dict(data.get("config") or {})
    for path_field in ("out", "sae", "store"):
        config.pop(path_field, None)
    return {**{k: v for k, v in data.items() if k not in VOLATILE_RESULT_FIELDS}, "config": config}


def leftovers(root: Path) -> list[str]:
    """Temporary files, half-published states or superseded folders anywhere under ``root``."""
    names = (".tmp", ".old-", ".superseded-", ".partial")
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if any(n in p.name for n in names))


@pytest.fixture(scope="module")
def whole_run(tiny_smollm, tmp_path_factory):
    where = tmp_path_factory.mktemp("whole-run")
    n_events = counted_run(run_argv(tiny_smollm, where / "runs"), where)
    [run_dir] = (where / "runs").iterdir()
    return run_dir, n_events


def assert_same_run(run_dir: Path, whole: Path) -> None:
    import numpy as np

    from scircuits.store import ActivationStore

    a, b = ActivationStore(run_dir / "activations.zarr"), ActivationStore(whole / "activations.zarr")
    assert a.complete and (a.n_examples, a.n_tokens) == (b.n_examples, b.n_tokens)
    assert np.array_equal(a.read_rows(0, a.n_tokens), b.read_rows(0, b.n_tokens))
    assert np.array_equal(a.token_ids, b.token_ids)
    weights = Path("sae") / ckpt.WEIGHTS_FILE
    assert (run_dir / weights).read_bytes() == (whole / weights).read_bytes()
    assert comparable_results(run_dir / "causal") == comparable_results(whole / "causal")
    examples = Path("causal") / "examples.jsonl"
    assert (run_dir / examples).read_text() == (whole / examples).read_text()
    assert (run_dir / "report.html").is_file() and (run_dir / "report.md").is_file()


@pytest.mark.parametrize("fraction", RUN_KILL_FRACTIONS)
def test_kill_9_during_run_then_rerun_equals_the_uninterrupted_run(
    tiny_smollm, whole_run, tmp_path, fraction
):
    whole, n_events = whole_run
    kill_at = 1 + int(fraction * (n_events - 1))
    argv = run_argv(tiny_smollm, tmp_path / "runs")
    run_dir = tmp_path / "runs" / whole.name
    kill_then_rerun(argv, kill_at, tmp_path, run_dir)
    assert_same_run(run_dir, whole)
    assert leftovers(run_dir) == []


def ablate_argv(model: Path, run_dir: Path, out: Path) -> list[str]:
    return [
        *("ablate", "--model", f"hf:{model}", "--sae", str(run_dir / "sae")),
        *("--store", str(run_dir / "activations.zarr"), "--out", str(out)),
        *TINY_RUN_FLAGS,
    ]


@pytest.fixture(scope="module")
def whole_ablate(tiny_smollm, whole_run, tmp_path_factory):
    where = tmp_path_factory.mktemp("whole-ablate")
    n_events = counted_run(ablate_argv(tiny_smollm, whole_run[0], where / "causal"), where)
    return where / "causal", n_events


@pytest.mark.parametrize("fraction", ABLATE_KILL_FRACTIONS)
def test_kill_9_during_ablate_then_rerun_equals_the_uninterrupted_results(
    tiny_smollm, whole_run, whole_ablate, tmp_path, fraction
):
    whole, n_events = whole_ablate
    out = tmp_path / "causal"
    kill_then_rerun(
        ablate_argv(tiny_smollm, whole_run[0], out), 1 + int(fraction * (n_events - 1)), tmp_path, out
    )
    assert comparable_results(out) == comparable_results(whole)
    assert (out / "examples.jsonl").read_text() == (whole / "examples.jsonl").read_text()
    assert leftovers(tmp_path) == []


# -- kill -9 at seeded points of `dashboard`, `compare` and `synth train` (the commands' own outputs) --

KILL_DASHBOARD_POINTS = KILL_COMPARE_POINTS = KILL_SYNTH_POINTS = 2
_later = random.Random(SEED + 3)
DASHBOARD_KILL_FRACTIONS = [round((i + _later.random()) / 2, 3) for i in range(KILL_DASHBOARD_POINTS)]
COMPARE_KILL_FRACTIONS = [round((i + _later.random()) / 2, 3) for i in range(KILL_COMPARE_POINTS)]
SYNTH_KILL_FRACTIONS = [round((i + _later.random()) / 2, 3) for i in range(KILL_SYNTH_POINTS)]


def dashboard_argv(run_dir: Path, out: Path) -> list[str]:
    return ["dashboard", str(run_dir), "--out", str(out), "--features", "3"]


def site_files(site: Path) -> dict[str, bytes]:
    """The site's files but its manifest (which records when and by what it was built)."""
    skip = {"manifest.json", artifacts.MARKER_FILE, artifacts.LOCK_FILE}
    return {
        str(p.relative_to(site)): p.read_bytes()
        for p in site.rglob("*")
        if p.is_file() and p.name not in skip
    }


@pytest.fixture(scope="module")
def whole_dashboard(whole_run, tmp_path_factory):
    where = tmp_path_factory.mktemp("whole-dashboard")
    n_events = counted_run(dashboard_argv(whole_run[0], where / "site"), where)
    return where / "site", n_events


@pytest.mark.parametrize("fraction", DASHBOARD_KILL_FRACTIONS)
def test_kill_9_during_dashboard_then_rerun_equals_the_uninterrupted_site(
    whole_run, whole_dashboard, tmp_path, fraction
):
    whole, n_events = whole_dashboard
    out = tmp_path / "site"
    argv = dashboard_argv(whole_run[0], out)
    kill_then_rerun(argv, 1 + int(fraction * (n_events - 1)), tmp_path, out)
    assert site_files(out) == site_files(whole)
    assert leftovers(tmp_path) == []


@pytest.fixture(scope="module")
def two_runs(whole_run, tmp_path_factory):
    """Two copies of the whole run (compare refreshes the dashboards of what it compares)."""
    where = tmp_path_factory.mktemp("two-runs")
    return [Path(shutil.copytree(whole_run[0], where / name)) for name in ("a", "b")]


def compare_argv(runs: list[Path], out: Path) -> list[str]:
    return [
        *("compare", str(runs[0]), str(runs[1]), "--out", str(out), "--no-train-twins", "--source"),
        *("store", "--max-tokens", "2000", "--permutations", "9", "--rsa-pairs", "20", "--no-progress"),
    ]


def comparable_comparison(out: Path) -> dict:
    """results.json but where it was written and how long each step took."""

    def timeless(value):
        if isinstance(value, dict):
            return {k: timeless(v) for k, v in value.items() if k not in ("seconds", "wall_seconds")}
        return [timeless(v) for v in value] if isinstance(value, list) else value

    data = json.loads((out / "results.json").read_text().replace(str(out), "OUT"))
    return timeless({k: v for k, v in data.items() if k not in ("provenance", "options")})


@pytest.fixture(scope="module")
def whole_compare(two_runs, tmp_path_factory):
    where = tmp_path_factory.mktemp("whole-compare")
    n_events = counted_run(compare_argv(two_runs, where / "cmp"), where)
    return where / "cmp", n_events


@pytest.mark.parametrize("fraction", COMPARE_KILL_FRACTIONS)
def test_kill_9_during_compare_then_rerun_equals_the_uninterrupted_results(
    two_runs, whole_compare, tmp_path, fraction
):
    import numpy as np

    whole, n_events = whole_compare
    out = tmp_path / "cmp"
    kill_at = 1 + int(fraction * (n_events - 1))
    kill_then_rerun(compare_argv(two_runs, out), kill_at, tmp_path, out, rerun_in_child=True)
    assert comparable_comparison(out) == comparable_comparison(whole)
    for npz in (whole / "matches").glob("*.npz"):
        a, b = np.load(npz), np.load(out / "matches" / npz.name)
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    assert (out / "report.md").is_file()
    assert leftovers(tmp_path) == [] and leftovers(two_runs[0].parent) == []


SYNTH_ARGV = ["synth", "train", "--task", "logic", "--size", "3", "--layers", "1", "--d-model", "32"]
SYNTH_ARGV += [
    "--steps",
    "12",
    "--batch-size",
    "16",
    "--eval-every",
    "4",
    "--eval-examples",
    "20",
    "--max-attempts",
    "1",
]
SYNTH_ENV = {"SC_COUNT_SYNTH": "1"}


def synth_curve(folder: Path) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "training.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in ("wall_s", "cpu_s")} for row in rows]


@pytest.fixture(scope="module")
def whole_synth(tmp_path_factory):
    where = tmp_path_factory.mktemp("whole-synth")
    n_events = counted_run([*SYNTH_ARGV, "--out", str(where / "model")], where, SYNTH_ENV)
    return where / "model", n_events


@pytest.mark.parametrize("fraction", SYNTH_KILL_FRACTIONS)
def test_kill_9_during_synth_train_then_rerun_equals_the_uninterrupted_model(whole_synth, tmp_path, fraction):
    whole, n_events = whole_synth
    out = tmp_path / "model"
    argv = [*SYNTH_ARGV, "--out", str(out)]
    kill_then_rerun(argv, 1 + int(fraction * (n_events - 1)), tmp_path, out, SYNTH_ENV)
    assert (out / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()
    assert synth_curve(out) == synth_curve(whole)
    assert leftovers(tmp_path) == []


KILL_POINTS = (
    len(STATE_STEPS)
    + len(KILL_TRAIN_POINTS)
    + len(KILL_COLLECT_POINTS)
    + KILL_RUN_POINTS
    + KILL_ABLATE_POINTS
    + KILL_DASHBOARD_POINTS
    + KILL_COMPARE_POINTS
    + KILL_SYNTH_POINTS
)


# -- --force: what is refused today is moved aside (never deleted) with --force --------------------


def test_train_force_moves_aside_a_folder_of_user_files(store, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(ArtifactError, match="pass --force to move it aside") as caught:
        train(config(store, out))
    assert "\n" not in str(caught.value) and (out / "notes.txt").read_text() == "precious"
    train(config(store, out, force=True))
    [aside] = tmp_path.glob("mine.superseded-*")
    assert (aside / "notes.txt").read_text() == "precious" and not (out / "notes.txt").exists()
    assert ckpt.is_complete(out, config(store, out).config_hash())


def test_train_force_moves_aside_an_unresumed_training_state(store, tmp_path, straight):
    out = tmp_path / "sae"
    train(config(store, out), stop_after_steps=4)
    with pytest.raises(ConfigError, match="add --resume to continue it, or --force"):
        train(config(store, out))
    train(config(store, out, force=True))
    [aside] = tmp_path.glob("sae.superseded-*")
    assert ckpt.has_training_state(aside)
    assert (out / ckpt.WEIGHTS_FILE).read_bytes() == straight  # started over, not resumed


def test_ablate_force_moves_aside_a_folder_of_user_files(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.json").write_text('{"mine": true}')
    with pytest.raises(ArtifactError, match="pass --force to move it aside"):
        run_ablate(ablate_config(out))
    with pytest.raises(ConfigError, match="needs --sae"):  # --force moves them only for new results
        run_ablate(ablate_config(out, force=True))
    assert not list(tmp_path.glob("mine.superseded-*"))
    assert (out / "results.json").read_text() == '{"mine": true}'


def test_collect_refuses_a_folder_of_user_files_before_the_weights_and_force_moves_it(tmp_path, monkeypatch):
    from scircuits.store.errors import NotAStoreError

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    arithmetic = dict(benchmark="arithmetic", benchmark_options={}, limit=3)
    with pytest.raises(NotAStoreError, match=r"not an activation store .*pass --force") as caught:
        collect_without_weights(collect_config(None, out, **arithmetic), monkeypatch)
    assert "\n" not in str(caught.value) and (out / "notes.txt").read_text() == "precious"

    import scircuits.platform.collect.collection as collection

    assert collection._check_existing_store(collect_config(None, out, force=True, **arithmetic)) is None
    [aside] = tmp_path.glob("mine.superseded-*")
    assert (aside / "notes.txt").read_text() == "precious" and not out.exists()


def test_collect_force_moves_aside_a_store_of_another_collection(tmp_path):
    import scircuits.platform.collect.collection as collection
    from scircuits.store import StoreMismatchError
    from scircuits.store.synthetic import synthetic_attrs

    first = collect_config(None, tmp_path / "s.zarr", benchmark="arithmetic", benchmark_options={}, limit=5)
    attrs = {**synthetic_attrs(), "config": first.identity(), "config_hash": first.config_hash()}
    write_synthetic_store(first.out, n_examples=2, d_model=4, attrs=attrs)
    other = first.model_copy(update={"limit": 4})
    with pytest.raises(StoreMismatchError, match=r"limit: stored 5, now 4.*pass --force"):
        collection._check_existing_store(other)
    assert collection._check_existing_store(other.model_copy(update={"force": True})) is None
    [aside] = tmp_path.glob("s.zarr.superseded-*")
    assert (aside / "zarr.json").is_file() and not (tmp_path / "s.zarr").exists()


@pytest.fixture
def fake_stages(monkeypatch):
    from tests.test_pipeline import FakeStages

    return FakeStages(monkeypatch)


def test_run_refuses_a_run_directory_of_user_files_and_force_moves_it(tmp_path, fake_stages):
    from scircuits.platform.config import RunConfig
    from scircuits.platform.pipeline.run import plan, run_pipeline

    settings = RunConfig(out=str(tmp_path / "runs"), progress=False)
    run_dir = plan(settings, get_plugins()).run_dir
    run_dir.mkdir(parents=True)
    (run_dir / "thesis.tex").write_text("precious")
    with pytest.raises(ArtifactError, match=r"did not write \(thesis.tex\).*pass --force") as caught:
        run_pipeline(settings, get_plugins())
    assert "\n" not in str(caught.value) and fake_stages.calls == []
    assert (run_dir / "thesis.tex").read_text() == "precious"
    forced = settings.model_copy(update={"force": True})
    assert all(c is None or c.force for c in plan(forced, get_plugins()).configs.values())
    run_pipeline(forced, get_plugins())
    assert fake_stages.calls == ["collect", "train", "ablate", "report"]
    [aside] = run_dir.parent.glob(f"{run_dir.name}.superseded-*")
    assert (aside / "thesis.tex").read_text() == "precious" and not (run_dir / "thesis.tex").exists()
    fake_stages.calls.clear()
    run_pipeline(settings, get_plugins())  # the run it wrote is its own: no --force needed
    assert fake_stages.calls == []


# -- a disk that fills up: ENOSPC injected where each stage really writes ----------------------------

ENOSPC_CHILD = textwrap.dedent(
    """
    import errno, sys
    import torch
    torch.set_num_threads(1)
    import zarr.storage._local as local
    fail_at = int(sys.argv[1])
    calls = {"n": 0}
    real_put = local._put
    def put(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_put(*args, **kwargs)
    local._put = put
    from scircuits.cli import main
    main(sys.argv[2:])
    """
)
ENOSPC_COLLECT_WRITES = sorted(random.Random(SEED + 4).sample(range(4, 30), 2))


@pytest.mark.parametrize("fail_at", ENOSPC_COLLECT_WRITES)
def test_a_full_disk_during_collect_is_one_line_and_the_rerun_resumes_to_the_same_store(
    collected, tmp_path, fail_at
):
    import numpy as np

    from scircuits.store import ActivationStore
    from tests.test_collect import collect_command, recorded

    folder, whole = collected
    out = tmp_path / "s.zarr"
    command = collect_command(folder, out, COLLECT_N)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = subprocess.run(
        [sys.executable, "-c", ENOSPC_CHILD, str(fail_at), *command[3:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert full.returncode == 2, full.stderr[-2000:]
    TRIED.append(f"collect full disk: write {fail_at}")
    [message] = [line for line in full.stderr.splitlines() if line.startswith("Error:")]
    assert "no space left on the device" in message and "run the same command again" in message
    assert "Traceback" not in full.stderr
    assert not recorded(out).get("complete")
    rerun_here(command[3:])
    a, b = ActivationStore(out), ActivationStore(whole)
    assert a.complete and (a.n_examples, a.n_tokens) == (b.n_examples, b.n_tokens)
    assert np.array_equal(a.read_rows(0, a.n_tokens), b.read_rows(0, b.n_tokens))
    assert not [p for p in out.rglob("*") if p.name.endswith(".partial")]


def test_a_full_disk_while_writing_the_sae_is_one_line_and_resume_ends_identical(
    store, tmp_path, straight, monkeypatch, capsys
):
    import safetensors.torch as st
    from safetensors import SafetensorError

    from scircuits.cli import main

    out = tmp_path / "sae"
    real_save_file = st.save_file

    def full(tensors, filename, *args, **kwargs):  # what safetensors raises on a full disk
        if Path(filename).name.startswith("." + ckpt.WEIGHTS_FILE):
            Path(filename).write_bytes(b"half")
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(st, "save_file", full)
    values = config(store, out).model_dump(mode="json")
    argv = ["train", "--store", str(store), "--k", "4", "--out", str(out), "--no-progress"]
    for name in ("expansion", "batch_size", "epochs", "lr", "warmup_steps", "eval_every", "log_every"):
        argv += ["--" + name.replace("_", "-"), str(values[name])]
    argv += ["--eval-tokens", "256", "--checkpoint-every", "4"]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    [message] = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("Error")]
    assert "cannot write the checkpoint (no space left on the device)" in message
    assert not ckpt.is_complete(out) and not list(out.glob(".*.tmp-*"))
    monkeypatch.setattr(st, "save_file", real_save_file)
    main([*argv, "--resume"])
    assert (out / ckpt.WEIGHTS_FILE).read_bytes() == straight


def test_a_read_only_out_stops_train_with_one_line(store, tmp_path, monkeypatch):
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(artifacts.os, "open", read_only)
    with pytest.raises(ArtifactError, match=r"cannot write here \(read-only file system\); choose another"):
        train(config(store, tmp_path / "sae"))


def test_collect_checks_its_out_before_the_weights_and_creates_nothing(tmp_path, monkeypatch):
    out = tmp_path / ("x" * 300)
    arithmetic = dict(benchmark="arithmetic", benchmark_options={}, limit=3)
    with pytest.raises(ArtifactError, match=r"the path is too long\); choose another --out"):
        collect_without_weights(collect_config(None, out, **arithmetic), monkeypatch)
    assert list(tmp_path.iterdir()) == []


def test_a_bad_sae_option_for_a_run_of_an_hf_folder_model_touches_nothing(tiny_smollm, tmp_path, fake_stages):
    from scircuits.platform.config import RunConfig
    from scircuits.platform.pipeline.run import run_pipeline

    settings = RunConfig(model=f"hf:{tiny_smollm}", layer=2, out=str(tmp_path / "runs"), progress=False)
    run_dir = run_pipeline(settings, get_plugins())
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".scircuits-lock"}
    fake_stages.calls.clear()
    bad = settings.model_copy(update={"train": settings.train.model_copy(update={"hparams": {"k": 100000}})})
    with pytest.raises(
        ConfigError, match=r"k=100000 is larger than the SAE's 256 latents \(expansion 4 x width 64\)"
    ):
        run_pipeline(bad, get_plugins())
    assert fake_stages.calls == []
    assert {
        p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".scircuits-lock"
    } == before


def test_a_bad_line_far_into_the_data_file_stops_ablate_before_the_weights(gsm8k_file, tmp_path, monkeypatch):
    import scircuits.platform.causal.stage as stage

    with open(gsm8k_file, "a") as fh:
        fh.write("{not json\n")
    n_lines = len(gsm8k_file.read_text().splitlines())
    monkeypatch.setattr(stage, "check_weights_available", lambda *a: pytest.fail("weights were checked"))
    (tmp_path / "sae").mkdir()  # beside --out: an --out inside the SAE folder is refused first
    settings = ablate_config(
        tmp_path / "causal",
        sae=str(tmp_path / "sae"),
        benchmark="gsm8k",
        benchmark_options={"data": str(gsm8k_file)},
        limit=None,
    )
    with pytest.raises(DataFormatError, match=f"line {n_lines}") as caught:
        run_ablate(settings)
    assert "\n" not in str(caught.value) and not (tmp_path / "causal").exists()


def test_a_bad_line_far_into_the_data_file_stops_run_before_any_stage(gsm8k_file, tmp_path, fake_stages):
    from scircuits.platform.config import RunConfig
    from scircuits.platform.pipeline.run import run_pipeline

    with open(gsm8k_file, "a") as fh:
        fh.write("{not json\n")
    n_lines = len(gsm8k_file.read_text().splitlines())
    settings = RunConfig(
        benchmark="gsm8k",
        benchmark_options={"data": str(gsm8k_file)},
        limit=None,
        out=str(tmp_path / "runs"),
        progress=False,
    )
    with pytest.raises(DataFormatError, match=f"line {n_lines}"):
        run_pipeline(settings, get_plugins())
    assert fake_stages.calls == [] and not (tmp_path / "runs").exists()
