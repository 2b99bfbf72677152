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
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
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
