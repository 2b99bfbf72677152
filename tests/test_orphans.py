"""A killed `train --nproc 2` leaves no DDP worker running, and no new writer is let in beside one.

Real processes: the launcher is `scircuits train --nproc 2` in a child (gloo on CPU), killed with
SIGKILL while its workers train.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from scircuits.platform.common import artifacts
from scircuits.platform.common.artifacts import ArtifactError
from scircuits.store.synthetic import write_synthetic_store

PROJECT_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": f"{PROJECT_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def workers_of(pid: int) -> list[int]:
    """The processes running `_spawned` under ``pid`` (multiprocessing's resource tracker is not one)."""
    out = []
    for child in children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "resource_tracker" not in cmdline:
            out.append(child)
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "acts.zarr"
    return write_synthetic_store(path, n_examples=400, d_model=32, dtype="float32", chunk_rows=256)


def train_argv(store: Path, out: Path, *extra: str) -> list[str]:
    return [
        *(sys.executable, "-c", "import sys; from scircuits.cli import main; main(sys.argv[1:])", "train"),
        *("--store", str(store), "--sae", "topk"),
        *("--k", "4", "--expansion", "4", "--batch-size", "64", "--epochs", "50", "--eval-every"),
        *("100000", "--checkpoint-every", "20", "--nproc", "2", "--out", str(out), "--no-progress", *extra),
    ]


def test_kill_9_of_the_launcher_ends_its_workers_and_frees_the_folder(store, tmp_path):
    out = tmp_path / "sae"
    launcher = subprocess.Popen(
        train_argv(store, out), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until the workers have trained a few steps
            if len(workers_of(launcher.pid)) == 2 and (out / "train_log.jsonl").exists():
                break
            assert launcher.poll() is None, launcher.stderr.read()
            time.sleep(0.2)
        workers = workers_of(launcher.pid)
        assert len(workers) == 2, "the workers did not start"
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        deadline = time.monotonic() + 10
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(w) for w in workers), "DDP workers outlived their killed launcher"
    finally:
        for w in workers_of(launcher.pid):
            os.kill(w, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.kill()
    # neither the launcher nor a worker holds it: free once the killed group's last process has exited
    # (a helper process of the group may outlive the workers by a moment on a loaded machine)
    deadline = time.monotonic() + 30
    while True:
        try:
            with artifacts.FolderLock(out, "SAE checkpoint"):
                break
        except artifacts.ArtifactError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from scircuits.platform.common.artifacts import hold_for_group
    hold_for_group(Path(sys.argv[1]))
    print("held", flush=True)
    time.sleep(60)
    """
)


def test_a_writer_is_refused_while_a_worker_of_an_earlier_run_lives(store, tmp_path):
    """A worker whose launcher is gone (its parent-death signal missed) still keeps --resume out."""
    out = tmp_path / "sae"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], env=env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ArtifactError, match="worker processes of an earlier distributed run"):
            artifacts.FolderLock(out, "SAE checkpoint")
        resumed = subprocess.run(
            train_argv(store, out, "--resume"), env=env(), capture_output=True, text=True, timeout=120
        )
        assert resumed.returncode == 2
        assert "worker processes of an earlier distributed run" in resumed.stderr
        assert "Traceback" not in resumed.stderr
    finally:
        holder.kill()
        holder.wait()
    with artifacts.FolderLock(out, "SAE checkpoint"):  # free once the worker is gone
        pass
