"""Several sites in one forward, collections of shards written by gloo ranks, bfloat16 stores and the
prefetching reader, on a tiny model (and once on the real SmolLM2)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from scircuits.errors import ConfigError
from scircuits.platform.collect.collection import run_collect
from scircuits.platform.config import CollectConfig
from scircuits.platform.manager.plugin_set import get_plugins
from scircuits.platform.model.tracing import SitesTracer
from scircuits.platform.train.distributed import free_port
from scircuits.store import ActivationStore, ActivationStoreWriter, StoreMismatchError
from scircuits.store.collection import write_manifest
from scircuits.store.errors import NotAStoreError
from scircuits.testing import save_tiny_model, tiny_loaded_model
from tests.cli_helpers import run_cli
from tests.collect_helpers import (
    by_example,
    collect_process_command,
)

DOCS = [f"line {i}: {'alpha beta ' * (i % 5)}gamma {i * 3} delta." for i in range(200)]


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    loaded = tiny_loaded_model("gpt2-medium", seed=11)
    folder = save_tiny_model(loaded, tmp_path_factory.mktemp("tiny-gpt2"))
    return folder, loaded


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "c.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS * 3))
    return path


def config(folder, text, out, **extra) -> CollectConfig:
    values = dict(
        model="gpt2-medium",
        model_path=str(folder),
        corpus=str(text),
        context_size=16,
        tokens=16 * 40,
        batch_size=4,
        chunk_rows=64,
        out=str(out),
        progress=False,
        dtype="float32",
    )
    return CollectConfig(**{**values, **extra})


def test_one_forward_writes_every_site_equal_to_single_site_collections(tmp_path, tiny_gpt2, text):
    folder, _ = tiny_gpt2
    multi = tmp_path / "multi"
    run_collect(config(folder, text, multi, layers="1,2", sites="resid,mlp,attn"), get_plugins())
    manifest = json.loads((multi / "manifest.json").read_text())
    assert manifest["sites"] == ["attn1", "mlp1", "resid1", "attn2", "mlp2", "resid2"]
    for layer, site in [(1, "attn"), (2, "mlp"), (2, "resid")]:
        single = tmp_path / f"{site}{layer}.zarr"
        run_collect(config(folder, text, single, layer=layer, site=site), get_plugins())
        a, b = by_example(ActivationStore(single)), by_example(ActivationStore(multi / f"{site}{layer}"))
        assert a.keys() == b.keys() and len(a) == 40
        for key in a:
            np.testing.assert_allclose(a[key][0], b[key][0], rtol=1e-5, atol=1e-6)
            assert np.array_equal(a[key][1], b[key][1]) and np.array_equal(a[key][2], b[key][2])
        store = ActivationStore(multi, site=f"{site}{layer}")
        assert (store.attrs["layer"], store.attrs["site"]) == (layer, site)
    with pytest.raises(NotAStoreError, match=r"collection of 6 sites \(attn1, mlp1"):
        ActivationStore(multi)
    with pytest.raises(NotAStoreError, match=r"no site 'resid3'; its sites: attn1"):
        ActivationStore(multi, site="resid3")


def test_the_forward_stops_after_the_last_requested_block(tiny_gpt2):
    _, loaded = tiny_gpt2
    called = []
    handle = loaded.module("transformer.h.3").register_forward_hook(lambda *_: called.append(1))
    try:
        out = SitesTracer(loaded, [(2, "resid"), (1, "mlp")]).trace([[5, 6, 7], [8, 9]])
    finally:
        handle.remove()
    assert not called and set(out) == {(1, "mlp"), (2, "resid")}
    assert [t.shape for t in out[(2, "resid")]] == [torch.Size([3, 64]), torch.Size([2, 64])]


def test_layers_outside_the_model_or_a_missing_site_list_what_exists(tmp_path, tiny_gpt2, text):
    folder, _ = tiny_gpt2
    with pytest.raises(ConfigError, match=r"layer 9 is out of range for gpt2-medium: it has layers 0\.\.3"):
        run_collect(config(folder, text, tmp_path / "o", layers="1,9"), get_plugins())
    with pytest.raises(ConfigError, match=r"no site 'mlp_in'; its sites: resid, mlp, attn"):
        run_collect(config(folder, text, tmp_path / "o", layers="1", sites="resid,mlp_in"), get_plugins())
    run_collect(config(folder, text, tmp_path / "o", layers="1,3", tokens=32), get_plugins())  # not blocked
    assert ActivationStore(tmp_path / "o", site="resid3").n_tokens == 32


def collect_cli(folder, text, out, *extra: str) -> list[str]:
    return collect_process_command(
        folder,
        "--corpus",
        str(text),
        "--context-size",
        "16",
        "--batch-size",
        "4",
        "--chunk-rows",
        "64",
        "--dtype",
        "float32",
        "--layers",
        "1,2",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    )


def rank_pids(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    ranks = []
    for pid in map(int, children):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            ranks.append(pid)
    return sorted(ranks)


def shard_examples(out: Path) -> int:
    try:
        return json.loads((out / "resid1" / "shard-00001-of-00002" / "zarr.json").read_text())["attributes"][
            "n_examples"
        ]
    except (OSError, ValueError, KeyError):
        return 0


def test_two_gloo_ranks_match_one_process_and_a_killed_rank_resumes(tmp_path, tiny_gpt2, text):
    folder, _ = tiny_gpt2
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    tokens = str(16 * 400)
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run(
        collect_cli(folder, text, one, "--tokens", tokens),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    process = subprocess.Popen(
        collect_cli(folder, text, two, "--tokens", tokens, "--nproc", "2"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline, killed = time.monotonic() + 400, None
    while time.monotonic() < deadline and process.poll() is None:
        if shard_examples(two) >= 8:
            ranks = rank_pids(process.pid)
            if len(ranks) == 2:
                killed = ranks[1]
                os.kill(killed, signal.SIGKILL)
                break
        time.sleep(0.02)
    process.wait(timeout=120)
    assert killed is not None and process.returncode == 2, process.stderr.read().decode()[-2000:]
    at_kill = shard_examples(two)
    assert 8 <= at_kill < 200
    resumed = subprocess.run(
        collect_cli(folder, text, two, "--tokens", tokens, "--nproc", "2"),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for site in ("resid1", "resid2"):
        a, b = ActivationStore(one, site=site), ActivationStore(two / site)
        assert b.attrs["shards"] == 2 and b.complete and a.n_tokens == b.n_tokens == 400 * 16
        rows_a, rows_b = by_example(a), by_example(b)
        assert rows_a.keys() == rows_b.keys() == set(range(400))
        for key in rows_a:
            assert all(np.array_equal(x, y) for x, y in zip(rows_a[key], rows_b[key], strict=True))
    shard0 = ActivationStore(two / "resid1" / "shard-00000-of-00002")
    assert set(np.unique(shard0.example_ids) % 2) == {0}  # rank 0 holds the even contexts


def test_a_shard_of_another_collection_is_refused_never_merged(tmp_path, tiny_gpt2, text):
    folder, _ = tiny_gpt2
    first, other = tmp_path / "first", tmp_path / "other"
    run_collect(config(folder, text, first, layers="1,2"), get_plugins())
    run_collect(config(folder, text, other, layers="1,2", seed=5), get_plugins())
    ActivationStore(first / "resid1")  # readable as collected
    shard = first / "resid1" / "shard-00000-of-00001"
    shutil.move(shard, tmp_path / "kept")
    shutil.copytree(other / "resid1" / "shard-00000-of-00001", shard)
    with pytest.raises(
        StoreMismatchError, match=r"not shard 0 of 1 of this collection.*refused, never merged"
    ):
        ActivationStore(first / "resid1")
    shutil.rmtree(shard)
    shutil.move(tmp_path / "kept", shard)
    shutil.copytree(shard, first / "resid1" / "shard-00001-of-00002")
    with pytest.raises(
        StoreMismatchError, match=r"shard-00001-of-00002 that are not part of this collection"
    ):
        ActivationStore(first / "resid1")
    shutil.rmtree(first / "resid1" / "shard-00001-of-00002")
    with pytest.raises(StoreMismatchError, match=r"holds a different collection \(seed 0 -> 5\)\. Write"):
        run_collect(config(folder, text, first, layers="1,2", seed=5), get_plugins())
    assert ActivationStore(first / "resid2").complete  # nothing already written was lost
    again = run_collect(config(folder, text, first, layers="2,1"), get_plugins())  # the same blocks
    assert again.already_complete


def test_a_collection_of_other_processes_says_how_to_continue_it(tmp_path):
    identity = {"model": "m", "layers": "1,2"}
    write_manifest(tmp_path, "two", 2, ["resid1", "resid2"], identity)
    (tmp_path / "resid1").mkdir()
    with pytest.raises(
        StoreMismatchError,
        match=r"different collection \(processes 2 -> 1\)\. Collect it with --nproc 2 to continue it",
    ):
        write_manifest(tmp_path, "one", 1, ["resid1", "resid2"], identity)
    with pytest.raises(StoreMismatchError, match=r"\(layers 1,2 -> 1,2,3; sites resid1,resid2 -> resid1,"):
        write_manifest(tmp_path, "three", 2, ["resid1", "resid2", "resid3"], {**identity, "layers": "1,2,3"})


def test_train_and_inspect_read_a_collection_site(tmp_path, tiny_gpt2, text):
    folder, _ = tiny_gpt2
    out = tmp_path / "c"
    run_collect(config(folder, text, out, layers="1,2", tokens=16 * 64), get_plugins())
    inspected = run_cli("inspect", str(out / "resid2"), "--json")
    assert inspected.returncode == 0, inspected.stderr
    info = json.loads(inspected.stdout)
    assert info["shape"] == [64 * 16, 64] and info["attrs"]["data_source"]["kind"] == "corpus"
    trained = run_cli(
        "train",
        "--store",
        str(out / "resid2"),
        "--tokens",
        "4096",
        "--batch-size",
        "256",
        "--expansion",
        "2",
        "--out",
        str(tmp_path / "sae"),
        "--no-progress",
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    meta = json.loads((tmp_path / "sae" / "scircuits.json").read_text())
    assert meta["store"]["attrs"]["layer"] == 2 and meta["store"]["attrs"]["data_source"]["kind"] == "corpus"


def test_bfloat16_store_round_trips_the_bits_torch_rounds_to(tmp_path):
    rng = np.random.default_rng(0)
    rows = (rng.standard_normal((50, 8)) * 10).astype(np.float32)
    attrs = {"source": "synthetic"}
    with ActivationStoreWriter.open(
        tmp_path / "b.zarr", attrs, d_model=8, dtype="bfloat16", chunk_rows=16
    ) as w:
        w.append_example(0, np.arange(20), rows[:20])
        w.append_example(1, np.arange(30), rows[20:])
    store = ActivationStore(tmp_path / "b.zarr")
    expected = torch.from_numpy(rows).to(torch.bfloat16).float().numpy()
    assert store.dtype == "bfloat16" and np.array_equal(store.read_rows(0, 50), expected)
    assert store.verify()["ok"] and store.stats()["rows_total"] == 50
    batches = np.concatenate([b.numpy() for b in store.iter_batches(7, split="all", seed=1)])
    assert sorted(map(tuple, batches)) == sorted(map(tuple, expected))


def test_prefetching_reader_yields_the_same_batches_and_seeks_the_same(tmp_path):
    from scircuits.store.synthetic import write_synthetic_store

    path = write_synthetic_store(tmp_path / "s.zarr", n_examples=60, d_model=8, chunk_rows=16)
    plain, ahead = ActivationStore(path, prefetch=0), ActivationStore(path, prefetch=3)
    options = dict(seed=2, split="train", shuffle_buffer_rows=40, epoch=1)
    a = [b.numpy() for b in plain.iter_batches(9, **options)]
    b = [b.numpy() for b in ahead.iter_batches(9, **options)]
    assert len(a) == len(b) > 5 and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    sought = [b.numpy() for b in ahead.iter_batches(9, start_batch=4, **options)]
    assert all(np.array_equal(x, y) for x, y in zip(a[4:], sought, strict=True)) and len(sought) == len(a) - 4


def test_real_smollm2_corpus_collection_at_two_layers(tmp_path, smollm2, text):
    """The real SmolLM2-135M: one forward writes layers 3 and 6; rows equal a plain forward's."""
    out = tmp_path / "smol"
    summary = run_collect(
        CollectConfig(
            model="smollm2-135m",
            corpus=str(text),
            context_size=32,
            tokens=32 * 6,
            layers="3,6",
            batch_size=3,
            out=str(out),
            progress=False,
            dtype="bfloat16",
        ),
        get_plugins(),
    )
    assert summary.n_examples == 6 and summary.n_tokens == 6 * 32
    for layer in (3, 6):
        store = ActivationStore(out / f"resid{layer}")
        assert store.dtype == "bfloat16" and store.attrs["data_source"]["bos_token_id"] == store.token_ids[0]
        ids = store.token_ids[store.example_ids == 2]
        with torch.no_grad():
            hidden = smollm2.model(
                input_ids=torch.tensor([ids.tolist()]), output_hidden_states=True
            ).hidden_states
        expected = hidden[layer + 1][0].float().to(torch.bfloat16).float().numpy()
        got = store.read_rows(0, store.n_tokens)[store.example_ids == 2]
        error = np.linalg.norm(got - expected, axis=-1) / np.linalg.norm(expected, axis=-1)
        assert error.max() < 0.02, error.max()


def test_the_same_command_under_torchrun_writes_the_same_collection(tmp_path, tiny_gpt2, text):
    folder, _ = tiny_gpt2
    one, two = tmp_path / "one", tmp_path / "two"
    run_collect(config(folder, text, one, layers="1,2", tokens=16 * 12), get_plugins())
    torchrun = Path(sys.executable).with_name("torchrun")
    args = collect_cli(folder, text, two, "--tokens", str(16 * 12))[2:]  # after "python -m"
    result = subprocess.run(
        [str(torchrun), "--nproc-per-node", "2", "--master-port", str(free_port()), "-m", *args],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for site in ("resid1", "resid2"):
        a, b = by_example(ActivationStore(one, site=site)), by_example(ActivationStore(two / site))
        assert a.keys() == b.keys() == set(range(12)) and ActivationStore(two / site).attrs["shards"] == 2
        for key in a:
            np.testing.assert_allclose(a[key][0], b[key][0], rtol=1e-5, atol=1e-6)  # other thread counts
            assert np.array_equal(a[key][1], b[key][1]) and np.array_equal(a[key][2], b[key][2])


def test_a_url_holding_something_else_is_refused_before_any_weights_load(tmp_path, tiny_gpt2, text):
    import fsspec

    folder, _ = tiny_gpt2
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/scircuits-test/held/.scircuits-current.json", b'{"generation": "g-1"}')
    fs.pipe_file("/scircuits-test/held/g-1/sae_weights.safetensors", b"weights")
    with pytest.raises(NotAStoreError, match=r"exists and is not an activation store \(it holds \.scircuits"):
        run_collect(config(folder, text, "memory://scircuits-test/held"), get_plugins())
    fs.pipe_file("/scircuits-test/coll/manifest.json", b"{}")
    with pytest.raises(StoreMismatchError, match="holds a collection of several sites"):
        run_collect(config(folder, text, "memory://scircuits-test/coll"), get_plugins())
    assert fs.cat_file("/scircuits-test/held/g-1/sae_weights.safetensors") == b"weights"
