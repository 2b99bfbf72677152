"""Stores, SAE checkpoints and run folders on s3://, against a real S3 server (moto's, over HTTP)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from scircuits.store import ActivationStore, ActivationStoreWriter, StoreLockedError
from scircuits.store.remote import LOCK_OBJECT, RemoteLock, url_join
from scircuits.store.synthetic import synthetic_attrs, synthetic_example
from tests.s3_server import bucket, s3_endpoint  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]
D = 64


def expected(n_examples: int) -> tuple[np.ndarray, np.ndarray]:
    tokens, acts = zip(*(synthetic_example(i, D) for i in range(n_examples)), strict=True)
    return np.concatenate(tokens), np.concatenate(acts).astype(np.float16).astype(np.float32)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` (nothing it holds is released by itself) and reap it."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def s3fs_now():
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True)


def test_a_store_on_s3_is_written_resumed_and_read(bucket):  # noqa: F811
    url = url_join(bucket, "acts.zarr")
    writer = ActivationStoreWriter.open(url, synthetic_attrs(), d_model=D, chunk_rows=16)
    for i in range(5):
        writer.append_example(i, *synthetic_example(i, D))
    with pytest.raises(StoreLockedError, match=r"another scircuits process is writing this activation store"):
        ActivationStoreWriter.open(url, synthetic_attrs(), d_model=D, chunk_rows=16)
    writer.close(complete=False)
    assert not s3fs_now().exists(url_join(url, LOCK_OBJECT))  # released on close
    writer = ActivationStoreWriter.open(url, synthetic_attrs(), d_model=D, chunk_rows=16)
    assert writer.n_examples_written == 5
    for i in range(5, 9):
        writer.append_example(i, *synthetic_example(i, D))
    writer.close()
    store = ActivationStore(url)
    tokens, acts = expected(9)
    assert store.complete and store.n_examples == 9 and store.size_on_disk() > 0
    np.testing.assert_array_equal(store.read_rows(0, store.n_tokens), acts)
    np.testing.assert_array_equal(store.token_ids, tokens)


def test_a_lock_left_on_another_host_is_refused_and_named(bucket):  # noqa: F811
    url = url_join(bucket, "held.zarr")
    holder = {"host": "elsewhere", "pid": 1, "created": "2026-01-01T00:00:00+00:00", "token": "t"}
    s3fs_now().pipe_file(url_join(url, LOCK_OBJECT)[len("s3://") :], json.dumps(holder).encode())
    with pytest.raises(StoreLockedError) as info:
        ActivationStoreWriter.open(url, synthetic_attrs(), d_model=D)
    message = str(info.value)
    assert "process 1 on elsewhere" in message and f"delete {url}/{LOCK_OBJECT}" in message
    assert "\n" not in message


def test_the_lock_is_one_conditional_put(bucket):  # noqa: F811
    """Two lock attempts on one folder from this process: the second is refused by the server (its
    holder is alive), and the lock object is deleted only by its holder."""
    url = url_join(bucket, "folder")
    first = RemoteLock(url, "folder")
    with pytest.raises(StoreLockedError, match=r"process \d+ on .* since "):
        RemoteLock(url, "folder")
    first.release()
    with RemoteLock(url, "folder"):
        assert s3fs_now().exists(url_join(url, LOCK_OBJECT))
    assert not s3fs_now().exists(url_join(url, LOCK_OBJECT))


WRITER = textwrap.dedent(
    """
    import sys
    from scircuits.store import ActivationStoreWriter
    from scircuits.store.synthetic import synthetic_attrs, synthetic_example
    url, d = sys.argv[1], int(sys.argv[2])
    writer = ActivationStoreWriter.open(url, synthetic_attrs(), d_model=d, chunk_rows=32)
    for i in range(writer.n_examples_written, 100000):
        writer.append_example(i, *synthetic_example(i, d))
        writer.flush()
        print(i, flush=True)
    """
)


def test_a_kill_during_an_upload_leaves_the_previous_state_readable(bucket, tmp_path):  # noqa: F811
    """kill -9 of a writer in the middle of its uploads: the store reads as its last recorded state,
    byte for byte, and a new writer takes over the dead one's lock and finishes it."""
    url = url_join(bucket, "killed.zarr")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, url, str(D)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if int(line) >= 12:  # several chunks and progress records are written; uploads go on
                break
        else:
            pytest.fail(
                f"the writer ended early: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}"
            )
        with pytest.raises(StoreLockedError, match=r"writing this activation store \(process"):
            ActivationStoreWriter.open(url, synthetic_attrs(), d_model=D)
        time.sleep(0.05)
        kill(proc)
    finally:
        if proc.poll() is None:
            kill(proc)
    store = ActivationStore(url)
    assert not store.complete and store.n_examples >= 13
    tokens, acts = expected(store.n_examples)
    assert store.n_tokens == len(tokens)
    np.testing.assert_array_equal(store.read_rows(0, store.n_tokens), acts)
    np.testing.assert_array_equal(store.token_ids[: store.n_tokens], tokens)
    # the dead writer's lock (this host, its pid gone) is taken over; the store is finished
    writer = ActivationStoreWriter.open(url, synthetic_attrs(), d_model=D, chunk_rows=32)
    start = writer.n_examples_written
    for i in range(start, start + 5):
        writer.append_example(i, *synthetic_example(i, D))
    writer.close()
    store = ActivationStore(url)
    tokens, acts = expected(start + 5)
    assert store.complete and store.n_examples == start + 5
    np.testing.assert_array_equal(store.read_rows(0, store.n_tokens), acts)


# -- SAE checkpoints and other artifact folders ------------------------------------------------


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCIRCUITS_REMOTE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def train_config(store: str, out: str, **changes):
    from scircuits.platform.config import TrainConfig

    values = dict(
        store=store, sae="topk", hparams={"k": 4}, expansion=2, batch_size=64, epochs=2, lr=3e-3,
        warmup_steps=5, eval_every=10, log_every=5, eval_tokens=512, checkpoint_every=7, out=out,
        progress=False,
    )  # fmt: skip
    return TrainConfig(**{**values, **changes})


def test_train_reads_a_store_on_s3(bucket, tmp_path):  # noqa: F811
    """train --store s3://...: the same weights as from a local copy of the store."""
    import torch

    from scircuits.platform.manager.plugin_set import get_plugins
    from scircuits.platform.train.checkpoint import WEIGHTS_FILE
    from scircuits.platform.train.training import train
    from scircuits.store.synthetic import write_synthetic_store

    torch.set_num_threads(1)
    remote = url_join(bucket, "acts.zarr")
    local = tmp_path / "acts.zarr"
    for where in (remote, local):
        write_synthetic_store(where, n_examples=40, d_model=16, dtype="float32", chunk_rows=128)
    plugins = get_plugins()
    short = dict(epochs=None, tokens=256, eval_every=2, eval_tokens=64)
    from_s3 = train(train_config(remote, str(tmp_path / "a"), **short), plugins)
    from_disk = train(train_config(str(local), str(tmp_path / "b"), **short), plugins)
    assert (from_s3 / WEIGHTS_FILE).read_bytes() == (from_disk / WEIGHTS_FILE).read_bytes()


def test_train_publishes_its_checkpoint_on_s3_and_resumes_from_there(bucket, cache, tmp_path, capsys):  # noqa: F811
    """train --out s3://...: a run stopped mid-way publishes its resumable state, the resumed run
    ends with the weights of an uninterrupted local run, a rerun is skipped, and the checkpoint loads
    from its URL."""
    import torch

    from scircuits.platform.common.artifacts import ArtifactError
    from scircuits.platform.manager.plugin_set import get_plugins
    from scircuits.platform.train.checkpoint import META_FILE, WEIGHTS_FILE, load_sae
    from scircuits.platform.train.training import train
    from scircuits.store.synthetic import write_synthetic_store

    torch.set_num_threads(1)
    store = str(write_synthetic_store(tmp_path / "acts.zarr", n_examples=120, d_model=16, dtype="float32"))
    plugins = get_plugins()
    straight = train(train_config(store, str(tmp_path / "straight")), plugins)
    url = url_join(bucket, "sae")
    with (
        RemoteLock(url, "SAE checkpoint"),
        pytest.raises(ArtifactError, match=r"writing this SAE checkpoint"),
    ):
        train(train_config(store, url), plugins)  # another writer holds the URL
    train(train_config(store, url), plugins, stop_after_steps=11)
    fs = s3fs_now()
    pointer = json.loads(fs.cat_file(url_join(url, ".scircuits-current.json")))
    generation = url_join(url, pointer["generation"])
    assert fs.exists(url_join(generation, "training_state/state.json"))
    assert not fs.exists(url_join(generation, META_FILE))
    assert not fs.exists(url_join(url, LOCK_OBJECT))
    train(train_config(store, url, resume=True), plugins)
    pointer = json.loads(fs.cat_file(url_join(url, ".scircuits-current.json")))
    generation = url_join(url, pointer["generation"])
    assert fs.cat_file(url_join(generation, WEIGHTS_FILE)) == (straight / WEIGHTS_FILE).read_bytes()
    assert json.loads(fs.cat_file(url_join(generation, META_FILE)))["complete"]
    fs.invalidate_cache()
    assert [p.rsplit("/", 1)[-1] for p in fs.ls(url) if "/g-" in p] == [pointer["generation"]]
    capsys.readouterr()
    train(train_config(store, url), plugins)
    err = capsys.readouterr().err
    assert "already holds a complete checkpoint" in err and "is unchanged; kept its current generation" in err
    fs.invalidate_cache()
    assert json.loads(fs.cat_file(url_join(url, ".scircuits-current.json"))) == pointer  # no new upload
    sae, info = load_sae(url, plugins)
    assert info["meta"]["complete"] and int(sae.W_dec.shape[0]) == 32
    # other settings at the URL: the earlier checkpoint is kept beside it, as locally, never deleted
    train(train_config(store, url, epochs=1), plugins)
    err = capsys.readouterr().err
    [kept] = [p for p in fs.ls(bucket, detail=False, refresh=True) if ".superseded-" in p]
    assert f"moved it to s3://{kept}" in err
    assert load_sae(f"s3://{kept}", plugins)[0].W_dec.shape == sae.W_dec.shape
    assert json.loads(fs.cat_file(url_join(f"s3://{kept}", ".scircuits-current.json")))["generation"]


PUBLISHER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from scircuits.platform.common.remote import publish_folder
    print("start", flush=True)
    publish_folder(Path(sys.argv[1]), sys.argv[2])
    """
)


def test_a_kill_during_a_folder_upload_leaves_the_previous_generation(bucket, cache, tmp_path):  # noqa: F811
    from scircuits.platform.common.remote import fetch_folder, publish_folder

    url = url_join(bucket, "results")
    old = tmp_path / "old"
    old.mkdir()
    (old / "results.json").write_text('{"version": "old"}')
    publish_folder(old, url)
    new = tmp_path / "new"
    (new / "parts").mkdir(parents=True)
    for i in range(150):
        (new / "parts" / f"{i:04d}.bin").write_bytes(os.urandom(2048))
    (new / "results.json").write_text('{"version": "new"}')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(new), url], stdout=subprocess.PIPE, env=env)
    fs = s3fs_now()
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"start"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            fs.invalidate_cache()
            if len([p for p in fs.find(url) if "/parts/" in p]) >= 10:
                break
            time.sleep(0.05)
        kill(proc)
    finally:
        if proc.poll() is None:
            kill(proc)
    fs.invalidate_cache()
    uploaded = [p for p in fs.find(url) if "/parts/" in p]
    assert 10 <= len(uploaded) < 150  # killed mid-upload
    got = fetch_folder(url, tmp_path / "read")
    assert sorted(p.name for p in got.iterdir()) == ["results.json"]
    assert (got / "results.json").read_text() == '{"version": "old"}'
    publish_folder(new, url)  # the next publish completes and removes the orphaned generation
    got = fetch_folder(url, tmp_path / "read")
    assert (got / "results.json").read_text() == '{"version": "new"}' and len(
        list((got / "parts").iterdir())
    ) == 150
    fs.invalidate_cache()
    assert len([p for p in fs.ls(url) if "/g-" in p]) == 1


# -- commands given URLs -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    from scircuits.testing import save_tiny_model, tiny_loaded_model

    folder = save_tiny_model(tiny_loaded_model("gpt2-medium", seed=11), tmp_path_factory.mktemp("tiny-gpt2"))
    corpus = tmp_path_factory.mktemp("corpus") / "c.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": f"line {i}: alpha beta gamma {i * 3}."}) + "\n" for i in range(60))
    )
    return folder, corpus


COLLECT = dict(model="gpt2-medium", context_size=16, tokens=320, batch_size=4, chunk_rows=64, dtype="float32")


def collect_args(folder: Path, corpus: Path, out: str, *extra: str) -> list[str]:
    flags = [x for key, value in COLLECT.items() for x in (f"--{key.replace('_', '-')}", str(value))]
    return [
        "collect",
        *flags,
        "--model-path",
        str(folder),
        "--corpus",
        str(corpus),
        "--no-progress",
        "--out",
        out,
        *extra,
    ]


def test_collect_writes_a_store_and_a_collection_of_sites_to_s3(bucket, tiny_gpt2, tmp_path):  # noqa: F811
    """`scircuits collect --out s3://...` end to end, one store and a collection of two sites (its
    manifest and one store per site): the same rows as a local collection."""
    from scircuits.platform.collect.collection import run_collect
    from scircuits.platform.config import CollectConfig
    from scircuits.platform.manager.plugin_set import get_plugins
    from tests.cli_helpers import run_cli

    folder, corpus = tiny_gpt2
    one, many = url_join(bucket, "acts.zarr"), url_join(bucket, "sites")
    result = run_cli(*collect_args(folder, corpus, one, "--layer", "2"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"{one}: ")
    for out, layers in ((many, "1,2"), (str(tmp_path / "acts.zarr"), "2")):  # in this process: faster
        config = CollectConfig(**COLLECT, model_path=str(folder), corpus=str(corpus), out=out, layers=layers)
        run_collect(config.model_copy(update={"progress": False}), get_plugins())
    local = ActivationStore(tmp_path / "acts.zarr")
    rows = local.read_rows(0, local.n_tokens)
    assert local.n_tokens == 320
    for store in (
        ActivationStore(one),
        ActivationStore(many, site="resid2"),
        ActivationStore(url_join(many, "resid2")),
    ):
        assert store.complete and store.n_tokens == 320
        np.testing.assert_array_equal(store.read_rows(0, store.n_tokens), rows)
    assert ActivationStore(url_join(many, "resid1")).n_tokens == 320
    manifest = json.loads(s3fs_now().cat_file(url_join(many, "manifest.json")))
    assert manifest["sites"] == ["resid1", "resid2"] and manifest["world_size"] == 1
    assert not any(p.endswith(LOCK_OBJECT) for p in s3fs_now().find(bucket))


def test_paths_that_cannot_be_urls_say_so_in_one_line(bucket, tiny_gpt2):  # noqa: F811
    from tests.cli_helpers import run_cli

    folder, corpus = tiny_gpt2
    cases = [
        (
            collect_args(folder, corpus, url_join(bucket, "m"), "--layers", "1,2", "--nproc", "2"),
            "local --out",
        ),
        (
            ["collect", "--model", "gpt2-medium", "--model-path", url_join(bucket, "w"), "--out", "x"],
            "--model-path s3://",
        ),
    ]
    for args, expected in cases:
        result = run_cli(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], result.stderr[-2000:]


def test_run_publishes_its_run_directory_to_s3_and_skips_it_when_complete(bucket, cache, monkeypatch):  # noqa: F811
    """`run --out s3://...` (the stages faked, as in test_pipeline): the run directory is one
    generation under <out>/<run name>; a second run downloads it and has nothing to do."""
    from scircuits.platform.config import RunConfig
    from scircuits.platform.manager.plugin_set import get_plugins
    from scircuits.platform.pipeline.run import run_pipeline
    from tests.test_pipeline import FakeStages

    stages = FakeStages(monkeypatch)
    config = RunConfig(out=url_join(bucket, "runs"), progress=False)
    local = run_pipeline(config, get_plugins())
    assert stages.calls == ["collect", "train", "ablate", "report"]
    url = url_join(bucket, "runs", local.name)
    fs = s3fs_now()
    pointer = json.loads(fs.cat_file(url_join(url, ".scircuits-current.json")))
    files = {
        p.split(pointer["generation"] + "/", 1)[1] for p in fs.find(url_join(url, pointer["generation"]))
    }
    assert {
        "pipeline.json",
        "report.html",
        "sae/sae_weights.safetensors",
        "activations.zarr/zarr.json",
    } <= files
    run_pipeline(config, get_plugins())
    assert stages.calls == ["collect", "train", "ablate", "report"]  # all skipped the second time


def test_ablate_writes_its_results_to_s3(bucket, cache, tmp_path):  # noqa: F811
    import torch

    from scircuits.platform.causal.stage import AblateInputs, run_ablate
    from scircuits.platform.config import AblateConfig
    from scircuits.platform.contract.sae_module import SparseAutoencoder
    from scircuits.platform.manager.plugin_set import load_plugins
    from scircuits.testing import tiny_loaded_model

    class ReluSAE(SparseAutoencoder):
        variant = "relu-test"

        def encode(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.pre_activation(x))

    plugins = load_plugins(entry_points_too=False)
    tiny = tiny_loaded_model("smollm2-135m")
    examples = list(plugins.benchmarks.get("arithmetic").examples("test", 4, 0, {}))
    torch.manual_seed(0)
    sae = ReluSAE(tiny.d_model, 2 * tiny.d_model).eval()
    url = url_join(bucket, "causal")
    config = AblateConfig(
        sae="", out=url, top_k=[1], random_controls=2, exact_top=2, faithfulness_n=[1, 2], bootstrap=50,
        progress=False, layer=2, reconstruction_gate=False,
    )  # fmt: skip
    run_ablate(config, plugins, inputs=AblateInputs(tiny, sae, {}, examples, 2))
    fs = s3fs_now()
    pointer = json.loads(fs.cat_file(url_join(url, ".scircuits-current.json")))
    results = json.loads(fs.cat_file(url_join(url, pointer["generation"], "results.json")))
    assert results["sweeps"][0]["k"] == 1 and not fs.exists(url_join(url, LOCK_OBJECT))
