"""Shared fixtures. Real benchmark files live in ../shared/data beside the project (never copied)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SCIRCUITS_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(
            f"benchmark data not found at {SHARED_DATA}: the project expects ../shared/data beside it "
            "(or set SCIRCUITS_SHARED_DATA)"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (LoadedModel), loaded once per test session."""
    from scircuits.platform.manager.plugin_set import get_plugins

    return get_plugins().models.get("smollm2-135m").load()


@pytest.fixture(autouse=True)
def _isolated_plugin_env(monkeypatch):
    monkeypatch.delenv("SCIRCUITS_LOAD_PLUGINS", raising=False)
    yield


def pytest_configure(config):
    # Two cores: keep torch from oversubscribing them when tests spawn processes.
    os.environ.setdefault("OMP_NUM_THREADS", "2")
