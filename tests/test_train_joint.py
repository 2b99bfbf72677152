"""Several SAEs from one pass over a collection (`scircuits train --store COLLECTION`): each equals the
SAE trained alone from its site; layout, index, bad input, kill -9 and resume, consumers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from scircuits.platform.circuit.sites import load_site_saes
from scircuits.platform.collect.collection import run_collect
from scircuits.platform.config import CollectConfig
from scircuits.platform.manager.plugin_set import get_plugins
from scircuits.platform.train import checkpoint as ckpt
from scircuits.store import ActivationStore
from scircuits.store.synthetic import write_synthetic_store
from scircuits.testing import save_tiny_model, tiny_loaded_model
from tests.cli_helpers import run_cli
from tests.collect_helpers import one_line

MODEL = "smollm2-135m"
DOCS = [f"line {i}: {'alpha beta ' * (i % 5)}gamma {i * 3} delta." for i in range(200)]
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# a short run: 16 steps of 128 tokens, a resumable state every 4, an evaluation every 6
TRAIN = ["--sae", "topk", "--k", "4", "--tokens", "2048", "--batch-size", "128", "--expansion", "2"]
TRAIN += ["--seed", "5", "--checkpoint-every", "4", "--eval-every", "6", "--log-every", "3", "--no-progress"]
HOOKS = [
    "blocks.0.hook_mlp_out",
    "blocks.0.hook_resid_post",
    "blocks.2.hook_mlp_out",
    "blocks.2.hook_resid_post",
]


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """A tiny SmolLM2-shaped model's collection: layers 0 and 2, sites resid and mlp (4 stores)."""
    root = tmp_path_factory.mktemp("joint")
    folder = save_tiny_model(tiny_loaded_model(MODEL), root / "model")
    text = root / "c.jsonl"
    text.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS * 3))
    out = root / "coll"
    values = dict(model=MODEL, model_path=str(folder), corpus=str(text), context_size=16, tokens=16 * 64)
    values.update(batch_size=4, chunk_rows=64, out=str(out), progress=False, dtype="float32")
    run_collect(CollectConfig(**values, layers="0,2", sites="resid,mlp"), get_plugins())
    return out


@pytest.fixture(scope="module")
def joint(collection, tmp_path_factory):
    out = tmp_path_factory.mktemp("joint-run") / "saes"
    done = run_cli("train", "--store", str(collection), *TRAIN, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def weights(folder: Path) -> dict:
    return load_file(str(folder / ckpt.WEIGHTS_FILE))


def log_without_timing(folder: Path) -> list[dict]:
    records = [json.loads(line) for line in (folder / ckpt.LOG_FILE).read_text().splitlines()]
    for record in records:
        record.pop("tokens_per_s", None)  # a timing
    return records


def assert_same_sae(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert sorted(wa) == sorted(wb)
    for name in wa:
        assert wa[name].dtype == wb[name].dtype and bool((wa[name] == wb[name]).all()), name
    assert log_without_timing(a) == log_without_timing(b)
    ma, mb = (json.loads((f / ckpt.META_FILE).read_text()) for f in (a, b))
    assert ma["metrics"] == mb["metrics"] and ma["config_hash"] == mb["config_hash"]


def test_each_sae_of_the_joint_pass_equals_the_sae_trained_alone(collection, joint, tmp_path):
    assert sorted(p.name for p in joint.iterdir() if p.is_dir()) == HOOKS
    for site, hook in (("resid2", "blocks.2.hook_resid_post"), ("mlp0", "blocks.0.hook_mlp_out")):
        alone = tmp_path / site
        done = run_cli("train", "--store", str(collection / site), *TRAIN, "--out", str(alone))
        assert done.returncode == 0, done.stderr[-3000:]
        assert_same_sae(alone, joint / hook)
    # the four SAEs differ from one another (each its own store, scale and initialisation)
    decoders = [weights(joint / hook)["W_dec"] for hook in HOOKS]
    assert all(not bool((decoders[0] == d).all()) for d in decoders[1:])


def test_the_sites_batches_hold_the_same_tokens(collection):
    """What lets one step read the same rows of every site: the same blocks, split and order."""
    batches = [
        ActivationStore(collection / site).iter_labelled_batches(128, seed=3, drop_last=True)
        for site in ("resid0", "mlp0", "resid2", "mlp2")
    ]
    for step in zip(*batches, strict=True):
        assert all(np.array_equal(step[0].example_ids, b.example_ids) for b in step[1:])
        assert all(np.array_equal(step[0].positions, b.positions) for b in step[1:])
        assert not all(np.array_equal(step[0].acts.numpy(), b.acts.numpy()) for b in step[1:])


def test_layout_index_and_provenance(collection, joint):
    index = json.loads((joint / "index.json").read_text())
    assert index["format"] == "scircuits.sae_set" and index["collection"] == str(collection)
    assert [e["path"] for e in index["saes"]] == HOOKS
    assert {e["site"] for e in index["saes"]} == {"resid0", "mlp0", "resid2", "mlp2"}
    assert all(e["sae"] == "topk" and e["hook_name"] == e["path"] for e in index["saes"])
    for entry in index["saes"]:
        folder = joint / entry["path"]
        cfg = json.loads((folder / ckpt.CFG_FILE).read_text())
        meta = json.loads((folder / ckpt.META_FILE).read_text())
        assert cfg["metadata"]["hook_name"] == entry["hook_name"]
        assert meta["collection"] == {
            "collection": str(collection),
            "site": entry["site"],
            "collection_id": index["collection_id"],
        }
        assert meta["store"]["path"] == str(collection / entry["site"]) and ckpt.is_complete(folder)


def test_a_subset_of_sites_and_a_rerun_that_skips_what_is_done(collection, joint, tmp_path):
    out = tmp_path / "saes"
    shutil.copytree(joint / "blocks.2.hook_resid_post", out / "blocks.2.hook_resid_post")
    kept = (out / "blocks.2.hook_resid_post" / ckpt.WEIGHTS_FILE).stat().st_mtime_ns
    done = run_cli("train", "--store", str(collection), "--sites", "resid", *TRAIN, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skipping" in done.stderr
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "blocks.0.hook_resid_post",
        "blocks.2.hook_resid_post",
    ]
    assert (out / "blocks.2.hook_resid_post" / ckpt.WEIGHTS_FILE).stat().st_mtime_ns == kept
    assert_same_sae(out / "blocks.0.hook_resid_post", joint / "blocks.0.hook_resid_post")
    # two sites given as stores take the same path (and the same folders)
    both = tmp_path / "both"
    stores = ["--store", str(collection / "mlp2"), "--store", str(collection / "resid0")]
    done = run_cli("train", *stores, "--layers", "0,2", *TRAIN, "--out", str(both))
    assert done.returncode != 0 and "--sites/--layers choose sites of a collection" in done.stderr
    done = run_cli("train", *stores, *TRAIN, "--out", str(both))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 SAE(s) in one pass" in done.stderr
    assert_same_sae(both / "blocks.2.hook_mlp_out", joint / "blocks.2.hook_mlp_out")


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--sites", "attn"], "has no site attn; its sites: mlp0, resid0, mlp2, resid2"),
        (["--layers", "1"], "has no layer 1; its sites"),
        (["--layers", "x"], "--layers: give comma-separated block numbers"),
        (["--layers", "2,2"], "--layers 2,2: give each once"),
        (["--sites", "mlp,mlp"], "--sites mlp,mlp: give each once"),
        (["--layers", ","], "--layers ',': give one or more"),
    ],
)
def test_sites_not_collected_are_refused_listing_those_that_exist(collection, tmp_path, args, needle):
    out = tmp_path / "saes"
    done = run_cli("train", "--store", str(collection), *args, *TRAIN, "--out", str(out))
    assert done.returncode == 2 and needle in one_line(done.stderr), done.stderr
    assert not out.exists()


def test_a_site_missing_or_sites_of_different_lengths_are_refused(collection, joint, tmp_path):
    broken = tmp_path / "coll"
    shutil.copytree(collection, broken)
    out = tmp_path / "saes"
    shutil.copytree(joint, out)  # a finished run there: nothing of it may be lost
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    zarr_json = broken / "mlp2" / "shard-00000-of-00001" / "zarr.json"
    meta = json.loads(zarr_json.read_text())
    meta["attributes"]["n_tokens"] -= 16  # as a collection killed between two sites' appends
    zarr_json.write_text(json.dumps(meta))
    done = run_cli("train", "--store", str(broken), *TRAIN, "--out", str(out))
    assert done.returncode == 2 and "different token counts" in one_line(done.stderr), done.stderr
    assert "mlp2 1008" in done.stderr and "run the same collect command again" in done.stderr
    shutil.rmtree(broken / "mlp2")
    done = run_cli("train", "--store", str(broken), *TRAIN, "--out", str(out))
    assert done.returncode == 2 and "missing" in one_line(done.stderr), done.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


KILL_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    import scircuits.platform.train.training as training
    kind, after = sys.argv[1], int(sys.argv[2])
    calls = {"n": 0}
    def killing(real):
        def call(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == after:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        return call
    if kind == "step":
        training.SAETrainer.train_step = killing(training.SAETrainer.train_step)
    else:
        training.ckpt.save_sae = killing(training.ckpt.save_sae)
    from scircuits.cli import main
    main(sys.argv[3:])
    """
)


@pytest.mark.parametrize("kind,after", [("step", 4 * 6 + 3), ("save", 3)])
def test_kill_9_then_the_same_command_with_resume_ends_bit_identical(
    collection, joint, tmp_path, kind, after
):
    """Killed mid-pass (some SAEs one step ahead of the others), or between the SAEs' final saves
    (two finished, two not): the finished are kept as they are, the rest resume from their states."""
    out = tmp_path / "saes"
    args = ["train", "--store", str(collection), *TRAIN, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": f"{PROJECT_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    killed = subprocess.run(
        [sys.executable, "-c", KILL_CHILD, kind, str(after), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    finished = [h for h in HOOKS if ckpt.is_complete(out / h)]
    assert len(finished) == (2 if kind == "save" else 0)
    kept = {h: (out / h / ckpt.WEIGHTS_FILE).read_bytes() for h in finished}
    again = run_cli(*args)  # without --resume: refused as single training refuses, nothing lost
    assert again.returncode == 2 and "add --resume" in one_line(again.stderr), again.stderr
    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for hook in HOOKS:
        assert weights(out / hook).keys() == weights(joint / hook).keys()
        assert (out / hook / ckpt.WEIGHTS_FILE).read_bytes() == (
            joint / hook / ckpt.WEIGHTS_FILE
        ).read_bytes()
    assert {h: (out / h / ckpt.WEIGHTS_FILE).read_bytes() for h in finished} == kept


def test_stores_of_different_token_sets_train_one_after_another_named_by_store(tmp_path):
    """The old path, with the folder named by the store (once `<store>__None` without --sae)."""
    stores = []
    for name, n in (("a", 120), ("b", 160)):
        stores += ["--store", str(write_synthetic_store(tmp_path / f"{name}.zarr", n_examples=n, d_model=16))]
    out = tmp_path / "saes"
    done = run_cli(
        "train", *stores, "--tokens", "512", "--batch-size", "64", "--no-progress", "--out", str(out)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "in one pass" not in done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a", "b"]
    assert all(ckpt.is_complete(out / name) for name in ("a", "b"))


def test_consumers_take_the_joint_run_folder_and_each_sae_folder(joint):
    plugins = get_plugins()
    for hook in HOOKS:
        sae, info = ckpt.load_sae(str(joint / hook), plugins)
        assert info["cfg"]["metadata"]["hook_name"] == hook and sae.d_in == 64
    adapter = plugins.models.get(MODEL)
    saes = load_site_saes([str(joint)], plugins, adapter, MODEL)
    assert [s.name for s in saes] == ["mlp0", "resid0", "mlp2", "resid2"]


def test_ablate_takes_one_sae_folder_of_the_joint_run(collection, joint, tmp_path):
    """`--sae OUT/<hook name>`: the layer comes from the checkpoint (--site has a default: resid)."""
    out = tmp_path / "causal"
    done = run_cli(
        "ablate",
        "--model",
        MODEL,
        "--model-path",
        str(collection.parent / "model"),
        "--benchmark",
        "arithmetic",
        "--sae",
        str(joint / "blocks.2.hook_mlp_out"),
        *["--site", "mlp", "--limit", "12", "--top-k", "1", "--random-controls", "2", "--exact-top", "1"],
        *["--bootstrap", "50", "--no-reconstruction-gate", "--no-progress", "--json", "--out", str(out)],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert (results["layer"], results["site"]) == (2, "mlp"), {k: results.get(k) for k in ("layer", "site")}


def test_circuit_runs_on_the_joint_run_folder(joint, tmp_path):
    from scircuits.platform.circuit.results import read_circuit
    from scircuits.platform.circuit.stage import run_circuit
    from tests.test_circuit import config as circuit_config

    config = circuit_config(tmp_path, [str(joint)], limit=8, nodes=6, sizes=[1, 3], exact_top=2, bootstrap=50)
    results = read_circuit(run_circuit(config, get_plugins(), loaded=tiny_loaded_model(MODEL)))
    assert [s.name for s in results.sites] == ["mlp0", "resid0", "mlp2", "resid2"]
    assert results.splice["max_abs_logit_diff"] < 1e-3


def test_saelens_loads_a_sae_of_the_joint_run(joint):
    from tests.test_published_reference import peer

    sae_lens = peer("sae_lens")
    import torch

    hook = "blocks.2.hook_resid_post"
    ours, _ = ckpt.load_sae(str(joint / hook), get_plugins())
    reference = sae_lens.SAE.load_from_disk(str(joint / hook))
    reference.eval()
    x = torch.randn(64, 64)
    with torch.no_grad():
        assert (ours.encode(x) - reference.encode(x)).abs().max().item() <= 1e-5
    assert reference.cfg.metadata.hook_name == hook


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_out_that_is_not_a_folder_of_site_saes_is_refused_and_left_as_it_was(collection, joint, tmp_path):
    """A collection's SAEs went into any --out (a user's index.json overwritten), into the collection
    read, or into a single SAE checkpoint."""
    users = tmp_path / "u"
    users.mkdir()
    (users / "index.json").write_text('{"my": 1}')
    (users / "notes.txt").write_text("x")
    single = tmp_path / "single"
    shutil.copytree(joint / HOOKS[1], single)
    inside = tmp_path / "coll-copy"
    shutil.copytree(collection, inside)
    for out, needle in [
        (users, "holds files scircuits did not write (index.json, notes.txt...)"),
        (single, "holds a sae artifact, not a folder of per-site SAEs"),
    ]:
        before = _snapshot(out)
        done = run_cli("train", "--store", str(collection), *TRAIN, "--out", str(out))
        assert done.returncode == 2 and needle in one_line(done.stderr), done.stderr
        assert _snapshot(out) == before
    before = _snapshot(inside)
    done = run_cli("train", "--store", str(inside), *TRAIN, "--out", str(inside))
    assert done.returncode == 2 and "which this command reads" in one_line(done.stderr), done.stderr
    assert _snapshot(inside) == before


def test_a_refused_joint_training_moves_no_finished_sae_aside(collection, joint, tmp_path):
    """--k larger than the SAE, or an --eval-fraction that leaves less than a batch, used to move every
    finished SAE aside before the refusal."""
    out = tmp_path / "saes"
    shutil.copytree(joint, out)
    before = _snapshot(out)
    for change, needle in [
        (["--k", "999"], "k=999 is larger than the SAE's"),
        (["--eval-fraction", "0.999"], "fewer training rows than one batch of 128"),
    ]:
        done = run_cli("train", "--store", str(collection), *TRAIN, *change, "--out", str(out))
        assert done.returncode == 2 and needle in one_line(done.stderr), done.stderr
        assert _snapshot(out) == before and not list(tmp_path.glob("**/*.superseded-*"))


def test_file_urls_are_the_local_paths_they_name(collection, tmp_path):
    """file:///… was read as a relative folder `file:/…` (an SAE written under the working directory,
    a collection not found)."""
    from scircuits.platform.config.stages import TrainConfig

    assert TrainConfig(store=f"file://{collection}", out=f"file://{tmp_path}/o").out == f"{tmp_path}/o"
    out = tmp_path / "saes"
    done = run_cli(
        "train", "--store", f"file://{collection}", "--sites", "resid", "--layers", "0", *TRAIN,
        "--out", f"file://{out}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / ckpt.META_FILE).is_file() and not Path("file:").exists()
