"""A refusal raised inside a --nproc worker (a ConfigError or DataFormatError of scircuits) reaches the
user as its own one line, as in one process; anything else stays a worker failure with its trace."""

from __future__ import annotations

import os

import pytest

from scircuits.platform.contract.errors import ConfigError, DataFormatError, ScircuitsError
from scircuits.platform.train.distributed import launch, worker_user_error


def refuse_on_rank_one() -> None:
    if os.environ.get("RANK") == "1":
        raise ConfigError("--layer 9: the model has 4 layers (0-3)")


def crash_on_rank_one() -> None:
    if os.environ.get("RANK") == "1":
        raise RuntimeError("an internal failure")


def test_the_last_line_of_a_workers_traceback_is_read_as_the_user_error_it_names():
    trace = "Traceback (most recent call last):\n  File 'x', line 1\n"
    trace += "scircuits.errors.ConfigError: --k 0: give k >= 1\n"
    error = worker_user_error(trace)
    assert type(error) is ConfigError and str(error) == "--k 0: give k >= 1"
    assert type(worker_user_error("scircuits.errors.DataFormatError: x.json, line 2")) is DataFormatError
    assert worker_user_error("RuntimeError: boom") is None
    assert worker_user_error("scircuits.nothing.Here: text") is None
    assert worker_user_error("") is None


def test_a_worker_refusal_is_its_one_line_and_a_crash_keeps_its_trace():
    with pytest.raises(ConfigError) as refused:
        launch(2, refuse_on_rank_one)
    assert str(refused.value) == "--layer 9: the model has 4 layers (0-3)"
    with pytest.raises(ScircuitsError) as crashed:
        launch(2, crash_on_rank_one)
    assert not isinstance(crashed.value, ConfigError)
    assert "failed in a worker process" in str(crashed.value) and "an internal failure" in str(crashed.value)


def sleep_and_record(folder: str) -> None:
    import time
    from pathlib import Path

    (Path(folder) / f"rank{os.environ['RANK']}.pid").write_text(str(os.getpid()))
    time.sleep(120)


def test_sigint_to_the_launcher_alone_stops_its_workers(tmp_path):
    """`kill -INT <launcher>` printed Aborted. while the workers trained on (the interpreter's exit
    waited for them)."""
    import signal
    import subprocess
    import sys
    import time

    code = (
        "from scircuits.platform.train.distributed import launch\n"
        "from tests.test_worker_errors import sleep_and_record\n"
        f"launch(2, sleep_and_record, {str(tmp_path)!r})\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("rank*.pid"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    pids = [int(p.read_text()) for p in tmp_path.glob("rank*.pid")]
    assert len(pids) == 2
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in pids)
