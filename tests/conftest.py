"""Shared fixtures.

Benchmark data: ``bench_data`` is tests/data (the first rows of each real file, committed, always
there); ``shared_data`` is the full real files in ../shared/data beside the project or
$SCIRCUITS_SHARED_DATA. Tests that need the full files take ``shared_data`` and are skipped, with the
reason, when it is missing; with SCIRCUITS_REQUIRE_FULL_DATA=1 (CI) a missing folder fails them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BENCH_DATA = PROJECT_ROOT / "tests" / "data"
SHARED_DATA = Path(os.environ.get("SCIRCUITS_SHARED_DATA") or PROJECT_ROOT.parent / "shared" / "data")
FULL_DATA_FOLDERS = ("gsm8k", "math", "logiqa")


def full_data_required() -> bool:
    return os.environ.get("SCIRCUITS_REQUIRE_FULL_DATA", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def bench_data() -> Path:
    """The committed first rows of the real benchmark files (tests/data/<benchmark>/)."""
    return BENCH_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The full real benchmark files; skipped without them (failed when they are required)."""
    missing = [name for name in FULL_DATA_FOLDERS if not (SHARED_DATA / name).is_dir()]
    if missing:
        reason = (
            f"full benchmark files not found: {SHARED_DATA} lacks {', '.join(missing)} (put the real files "
            "in ../shared/data beside the project or set SCIRCUITS_SHARED_DATA)"
        )
        if full_data_required():
            pytest.fail(f"{reason}; SCIRCUITS_REQUIRE_FULL_DATA is set, so these tests must run")
        pytest.skip(reason)
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (LoadedModel), loaded once per test session."""
    from scircuits.platform.manager.plugin_set import get_plugins

    return get_plugins().models.get("smollm2-135m").load()


@pytest.fixture(autouse=True)
def _isolated_plugin_env(monkeypatch):
    monkeypatch.delenv("SCIRCUITS_LOAD_PLUGINS", raising=False)
    # a level an in-process `-q` exported for spawned processes is not the next test's commands' level
    monkeypatch.delenv("SCIRCUITS_LOG_LEVEL", raising=False)
    yield


@pytest.fixture(autouse=True)
def _progress_env_restored():
    """An in-process command run with --no-progress sets variables that silence the libraries' bars
    (``silence_library_progress_bars``); they must not leak into later tests and their subprocesses."""
    from scircuits.platform.common.progress import QUIET_ENV

    before = {name: os.environ.get(name) for name in QUIET_ENV}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def _log_level_restored():
    """An in-process command run with -q or -v sets the level of the scircuits logger (and the variable
    its spawned processes read); later tests get the default back."""
    yield
    from scircuits.platform.common.logs import set_level

    set_level("INFO")


def pytest_configure(config):
    # Two cores: keep torch from oversubscribing them when tests spawn processes.
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    # Benchmarks without --data read a Hugging Face dataset: in tests never from the hub, and never
    # from the user's cache (an empty one per session), so "nothing cached" is what every test sees.
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    config._scircuits_datasets_cache = tempfile.mkdtemp(prefix="scircuits-test-datasets-")
    os.environ["HF_DATASETS_CACHE"] = config._scircuits_datasets_cache


def pytest_unconfigure(config):
    cache = getattr(config, "_scircuits_datasets_cache", None)
    if cache:
        shutil.rmtree(cache, ignore_errors=True)
