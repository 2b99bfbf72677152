"""`torchrun --nnodes 2 ... -m scircuits train`: two real torchrun agents on this machine as two
"nodes" (static rendezvous on 127.0.0.1, gloo), one rank each.

- they train what `train --nproc 2` trains, bit for bit (the same shares of the same batches);
- rank 0 alone claims, locks and writes: rank 1 is given its own --out, which must never appear,
  and the store's files are untouched;
- each rank reads its own part of the store (``activation_rows_read`` in scircuits.json);
- a rank killed mid-run (either one) leaves one line, no complete checkpoint and the last saved
  state; `--resume` on both nodes then ends with the uninterrupted run's weights, byte for byte;
- bad input (a batch the ranks cannot split, ranks started with other settings, a store one rank
  cannot read, a folder of user files) is one line in all, and nothing is written.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scircuits.cli import main
from scircuits.platform.train import checkpoint as ckpt
from scircuits.platform.train.distributed import free_port
from scircuits.platform.train.exclusion import fit_exclusion, row_norms
from scircuits.store import ActivationStore
from scircuits.store.synthetic import write_synthetic_store

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
KILL_SCRIPT = Path(__file__).with_name("torchrun_kill.py")
BLOCK_ROWS, EPOCHS, CHECKPOINT_EVERY = 64, 2, 5
pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside python")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "acts.zarr"
    return write_synthetic_store(path, n_examples=120, d_model=16, dtype="float32", chunk_rows=BLOCK_ROWS)


def settings(store, out: Path, changes: dict[str, str] | None = None, *more: str) -> list[str]:
    values = {
        "store": str(store),
        "sae": "topk",
        "k": "4",
        "expansion": "2",
        "batch-size": "64",
        "epochs": str(EPOCHS),
        "lr": "3e-3",
        "warmup-steps": "5",
        "eval-every": "10",
        "checkpoint-every": str(CHECKPOINT_EVERY),
        "out": str(out),
        **(changes or {}),
    }
    flags = (x for key, value in values.items() for x in (f"--{key}", value))
    return ["train", *flags, "--no-progress", *more]


def two_nodes(
    node0: list[str], node1: list[str], *, script: Path | None = None, kill: str | None = None
) -> list[subprocess.CompletedProcess]:
    """Run torchrun as node 0 and node 1 (one process each) at once; ``script`` instead of
    ``-m scircuits``; ``kill`` = "RANK:STEP" for tests/torchrun_kill.py."""
    port = str(free_port())
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": f"{PROJECT_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    if kill is not None:
        env["SCIRCUITS_TEST_KILL"] = kill
    entry = [str(script)] if script is not None else ["-m", "scircuits"]
    nodes = [
        subprocess.Popen(
            [
                *(str(TORCHRUN), "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank)),
                *("--master-addr", "127.0.0.1", "--master-port", port, *entry, *args),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank, args in enumerate((node0, node1))
    ]
    done = []
    try:
        for node in nodes:
            stdout, stderr = node.communicate(timeout=300)
            done.append(subprocess.CompletedProcess(node.args, node.returncode, stdout, stderr))
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    return done


def scircuits_errors(nodes: list[subprocess.CompletedProcess]) -> list[str]:
    """The lines scircuits printed as errors on both nodes (torchrun's own report is apart)."""
    return [line for node in nodes for line in node.stderr.splitlines() if line.startswith("Error: ")]


def scircuits_lines(node: subprocess.CompletedProcess) -> list[str]:
    """What scircuits printed on a node's stderr: its "[stage] ..." messages and "Error: " lines. The
    rest is torchrun's and c10d's own (e.g. the exit barrier's TCPStore warning when node 0's agent,
    which hosts the store, has already exited)."""
    return [line for line in node.stderr.splitlines() if re.match(r"(\[[a-z-]+\] |Error: )", line)]


def files_of(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def two_node_run(store, tmp_path_factory):
    """The uninterrupted run on two nodes; rank 1 is given an --out of its own."""
    where = tmp_path_factory.mktemp("two_nodes")
    before = files_of(Path(store))
    nodes = two_nodes(settings(store, where / "sae"), settings(store, where / "rank1"))
    assert [n.returncode for n in nodes] == [0, 0], nodes[0].stderr[-3000:] + nodes[1].stderr[-3000:]
    assert files_of(Path(store)) == before, "a rank wrote into the store"
    return where / "sae", where / "rank1", nodes


def test_two_nodes_train_what_nproc_2_trains_and_only_rank_0_writes(store, two_node_run, tmp_path):
    out, rank1_out, nodes = two_node_run
    assert not rank1_out.exists(), "rank 1 wrote its --out"
    assert nodes[0].stdout.strip() == str(out) and nodes[1].stdout == ""  # the path, printed once
    assert scircuits_errors(nodes) == []
    nproc, single = tmp_path / "nproc2", tmp_path / "one"
    main(settings(store, nproc, None, "--nproc", "2"))  # the command line in this process
    main(settings(store, single))
    assert (out / ckpt.WEIGHTS_FILE).read_bytes() == (nproc / ckpt.WEIGHTS_FILE).read_bytes()
    meta, meta_nproc, meta_single = (
        json.loads((path / ckpt.META_FILE).read_text()) for path in (out, nproc, single)
    )
    assert meta["complete"] and meta["world_size"] == 2 and meta["steps"] == meta_nproc["steps"]
    assert meta["config_hash"] == meta_nproc["config_hash"] == meta_single["config_hash"]
    # each rank measured its own blocks for the token exclusion: the record is the single process's
    assert meta["token_exclusion"] == meta_single["token_exclusion"]
    # as tests/test_distributed.py: another data order than one process, the same quality
    assert abs(meta["metrics"]["fvu"] - meta_single["metrics"]["fvu"]) < 0.05
    # rank 1 reads its half of the blocks for the exclusion, then its share of each epoch; one
    # process (and rank 0, which also evaluates) reads the whole store each time
    n = ActivationStore(store).n_tokens
    rank0, rank1 = meta["activation_rows_read"]
    (alone,) = meta_single["activation_rows_read"]
    assert meta_nproc["activation_rows_read"] == [rank0, rank1]
    assert EPOCHS * (n // 2 - 2 * BLOCK_ROWS) <= rank1 <= (EPOCHS + 1) * (n // 2 + 2 * BLOCK_ROWS)
    assert alone >= (EPOCHS + 1) * n * 0.9 and rank1 < alone / 2 and rank0 > rank1


def test_a_complete_checkpoint_is_skipped_by_every_rank(store, two_node_run):
    out, rank1_out, _ = two_node_run
    before = (out / ckpt.WEIGHTS_FILE).stat().st_mtime_ns
    nodes = two_nodes(settings(store, out), settings(store, rank1_out))
    assert [n.returncode for n in nodes] == [0, 0], nodes[0].stderr[-3000:]
    assert "already holds a complete checkpoint" in nodes[0].stderr and scircuits_lines(nodes[1]) == []
    assert (out / ckpt.WEIGHTS_FILE).stat().st_mtime_ns == before and not rank1_out.exists()


@pytest.mark.parametrize("killed", [0, 1])
def test_a_killed_rank_leaves_one_line_and_resume_ends_with_the_same_weights(
    store, two_node_run, tmp_path, killed
):
    out, rank1_out = tmp_path / "sae", tmp_path / "rank1"
    kill_before = 2 * CHECKPOINT_EVERY + 3  # killed three steps after the second saved state
    nodes = two_nodes(
        settings(store, out), settings(store, rank1_out), script=KILL_SCRIPT, kill=f"{killed}:{kill_before}"
    )
    assert nodes[0].returncode != 0 and nodes[1].returncode != 0
    assert "exitcode  : -9" in nodes[killed].stderr  # torchrun's report of the SIGKILL
    (line,) = scircuits_errors(nodes)
    assert f"rank {1 - killed} of 2 lost the other ranks" in line and "--resume" in line, line
    assert "scircuits/platform" not in nodes[1 - killed].stderr  # no traceback of the surviving rank
    assert not ckpt.is_complete(out) and not rank1_out.exists()
    state = ckpt.load_training_state(out)
    assert state is not None and state[1]["step"] == 2 * CHECKPOINT_EVERY
    nodes = two_nodes(settings(store, out, None, "--resume"), settings(store, rank1_out, None, "--resume"))
    assert [n.returncode for n in nodes] == [0, 0], nodes[0].stderr[-3000:] + nodes[1].stderr[-3000:]
    uninterrupted = two_node_run[0]
    assert (out / ckpt.WEIGHTS_FILE).read_bytes() == (uninterrupted / ckpt.WEIGHTS_FILE).read_bytes()
    assert not rank1_out.exists()


def test_a_rank_lost_after_the_last_step_leaves_rank_0_s_checkpoint_complete(store, two_node_run, tmp_path):
    out, rank1_out = tmp_path / "sae", tmp_path / "rank1"
    nodes = two_nodes(settings(store, out), settings(store, rank1_out), script=KILL_SCRIPT, kill="1:end")
    assert "exitcode  : -9" in nodes[1].stderr and nodes[0].returncode != 0
    (line,) = scircuits_errors(nodes)
    assert "rank 0 of 2 lost the other ranks" in line and f"the checkpoint in {out} is complete" in line, line
    assert ckpt.is_complete(out) and not rank1_out.exists()
    assert (out / ckpt.WEIGHTS_FILE).read_bytes() == (two_node_run[0] / ckpt.WEIGHTS_FILE).read_bytes()


BAD = {
    "batch": ({"batch-size": "63"}, {"batch-size": "63"}, "--batch-size 63 is not divisible by the 2"),
    "mismatch": ({}, {"k": "5"}, "different settings (--hparams {'k': 4} on rank 0, {'k': 5} on rank 1)"),
    "store": ({}, {"store": "/nonexistent/acts.zarr"}, "rank 1 of 2: /nonexistent/acts.zarr"),
    "width": ({}, {"expansion": "300"}, "rank 1 of 2: invalid train config"),
    "misspelt": ({}, {"epochz": "3"}, "rank 1 of 2: No such option '--epochz'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_writes_nothing(store, tmp_path, case):
    first, second, expected = BAD[case]
    out, rank1_out = tmp_path / "sae", tmp_path / "rank1"
    nodes = two_nodes(settings(store, out, first), settings(store, rank1_out, second))
    assert nodes[0].returncode != 0 and nodes[1].returncode != 0
    (line,) = scircuits_errors(nodes)
    assert expected in line, line
    assert not out.exists() and not rank1_out.exists()


def test_rank_0_claims_the_folder_a_folder_of_user_files_is_refused_untouched(store, tmp_path):
    out, rank1_out = tmp_path / "sae", tmp_path / "rank1"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    nodes = two_nodes(settings(store, out), settings(store, rank1_out))
    assert nodes[0].returncode != 0 and nodes[1].returncode != 0
    (line,) = scircuits_errors(nodes)
    assert "holds files scircuits did not write" in line and "--force" in line
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["notes.txt"]
    assert not rank1_out.exists()


def test_the_ranks_row_norms_add_up_to_the_whole_store(store):
    whole = ActivationStore(store)
    parts = [row_norms(ActivationStore(store), rank=r, world_size=3) for r in range(3)]
    norms, positions = (np.sum([p[i] for p in parts], axis=0) for i in (0, 1))
    expected = row_norms(whole)
    assert np.array_equal(norms, expected[0]) and np.array_equal(positions, expected[1])
    assert (
        fit_exclusion(whole, "outliers", measured=(norms, positions))[0]
        == fit_exclusion(whole, "outliers")[0]
    )


def test_python_dash_m_scircuits_is_the_command_line():
    env = {**os.environ, "PYTHONPATH": f"{PROJECT_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-m", "scircuits", "train", "--help"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0 and "--nproc" in done.stdout
