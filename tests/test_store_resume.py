"""Resume after a real SIGKILL of a writing subprocess: the finished store equals an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from scircuits.store import ActivationStore
from scircuits.store.synthetic import write_synthetic_store

N_EXAMPLES, D, CHUNK_ROWS = 60, 16, 32

# The child writes synthetic examples in order, skipping what the store already holds, and prints each
# index it appended. KILL="attrs:N" SIGKILLs itself at the N-th progress update (rows written, progress
# not yet recorded); KILL="put:N" in the middle of the N-th file write (a half-written temporary file).
CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    import zarr.storage._local as local
    from zarr.core.group import Group
    from scircuits.store import ActivationStoreWriter
    from scircuits.store.synthetic import synthetic_attrs, synthetic_example

    path, n_examples, d_model, chunk_rows = sys.argv[1], *map(int, sys.argv[2:5])
    kill = os.environ.get("KILL", "")
    if kill:
        where, nth = kill.split(":")
        calls = {"n": 0}
        def die_on_nth():
            calls["n"] += 1
            return calls["n"] == int(nth)
        if where == "attrs":
            original_update, original_update_async = Group.update_attributes, Group.update_attributes_async
            def update(self, *args, **kwargs):
                if die_on_nth():
                    os.kill(os.getpid(), signal.SIGKILL)
                return original_update(self, *args, **kwargs)
            async def update_async(self, *args, **kwargs):
                if die_on_nth():
                    os.kill(os.getpid(), signal.SIGKILL)
                return await original_update_async(self, *args, **kwargs)
            Group.update_attributes, Group.update_attributes_async = update, update_async
        else:
            original_put = local._put
            def put(file_path, value, exclusive=False):
                if die_on_nth():
                    half = value.as_buffer_like()[: len(value) // 2]
                    file_path.parent.mkdir(parents=True, exist_ok=True)
                    file_path.with_suffix(".killed.partial").write_bytes(bytes(half))
                    os.kill(os.getpid(), signal.SIGKILL)
                return original_put(file_path, value, exclusive)
            local._put = put
    writer = ActivationStoreWriter.open(path, synthetic_attrs(), d_model=d_model, chunk_rows=chunk_rows)
    print("start", writer.n_examples_written, flush=True)
    for index in range(writer.n_examples_written, n_examples):
        writer.append_example(index, *synthetic_example(index, d_model))
        print("appended", index, flush=True)
        if os.environ.get("SLOW"):
            time.sleep(0.01)
    writer.close()
    print("done", flush=True)
    """
)


def run_child(script: Path, store: Path, kill: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "KILL": kill}
    return subprocess.run(
        [sys.executable, str(script), str(store), str(N_EXAMPLES), str(D), str(CHUNK_ROWS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_identical_stores(resumed: Path, reference: Path) -> None:
    files = sorted(p.relative_to(resumed) for p in resumed.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    for rel in files:
        if rel == Path("zarr.json"):  # the group's attributes: equal except the creation time
            a, b = (json.loads((root / rel).read_text())["attributes"] for root in (resumed, reference))
            a.pop("created"), b.pop("created")
            assert a == b
        else:
            assert (resumed / rel).read_bytes() == (reference / rel).read_bytes(), rel
    old, new = ActivationStore(resumed), ActivationStore(reference)
    assert (old.n_tokens, old.n_examples, old.complete) == (new.n_tokens, new.n_examples, True)
    np.testing.assert_array_equal(old.read_rows(0, old.n_tokens), new.read_rows(0, new.n_tokens))
    for name in ("token_ids", "example_ids", "positions"):
        np.testing.assert_array_equal(getattr(old, name), getattr(new, name))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ref") / "ref.zarr"
    write_synthetic_store(path, n_examples=N_EXAMPLES, d_model=D, chunk_rows=CHUNK_ROWS)
    return path


@pytest.fixture
def child(tmp_path) -> Path:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return script


# Each list is a sequence of killed runs. put:1 is the group's creation, put:7 falls while the arrays
# grow (leaving them of different lengths), put:12 inside a chunk write; attrs:N right after rows were
# written, before their progress was recorded.
@pytest.mark.parametrize("kills", [["put:1", "put:7", "put:12", "attrs:2"], ["attrs:1", "put:3", "attrs:4"]])
def test_sigkill_at_chosen_points_then_resume(tmp_path, child, reference, kills):
    store = tmp_path / "s.zarr"
    for kill in kills:
        result = run_child(child, store, kill)
        assert result.returncode == -signal.SIGKILL, result.stderr
    if kills[-1].startswith("put"):
        assert list(store.rglob("*.partial")), "the kill should leave a half-written temporary file"
    result = run_child(child, store)
    assert result.returncode == 0, result.stderr
    assert not list(store.rglob("*.partial"))
    assert_identical_stores(store, reference)


def test_sigkill_from_outside_mid_run_then_resume(tmp_path, child, reference):
    store = tmp_path / "s.zarr"
    starts = []
    for stop_after in (17, 41):
        proc = subprocess.Popen(
            [sys.executable, str(child), str(store), str(N_EXAMPLES), str(D), str(CHUNK_ROWS)],
            env={**os.environ, "SLOW": "1"},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("start"):
                starts.append(int(line.split()[1]))
            if line.strip() == f"appended {stop_after}":
                os.kill(proc.pid, signal.SIGKILL)
                break
        assert proc.wait(timeout=60) == -signal.SIGKILL
    assert starts[0] == 0 and 0 < starts[1] <= 18  # the second run resumed, skipping recorded examples
    result = run_child(child, store)
    assert result.returncode == 0, result.stderr
    assert 0 < int(result.stdout.split()[1]) <= 42
    assert_identical_stores(store, reference)
