"""`--no-progress` silences every progress bar, the libraries' included (transformers' "Loading weights")."""

from __future__ import annotations

import os
import re

import pytest

from scircuits.platform.common.progress import QUIET_ENV
from tests.cli_helpers import run_cli

BAR = re.compile(r"\d+%\||it/s\]|\r|Loading weights|Generating .* split")


@pytest.mark.slow
def test_a_no_progress_command_prints_no_progress_bar(tmp_path, monkeypatch):
    for name in QUIET_ENV:  # nothing inherited silences the bars: the flag alone must
        monkeypatch.delenv(name, raising=False)
    quiet = run_cli("collect", "--limit", "2", "--no-progress", "--out", str(tmp_path / "quiet.zarr"))
    assert quiet.returncode == 0, quiet.stderr
    assert "2 examples" in quiet.stdout
    assert not BAR.search(quiet.stderr), quiet.stderr[-2000:]
    # the same command with progress shows the bars this test looks for, so the check above can fail
    loud = run_cli("collect", "--limit", "2", "--progress", "--out", str(tmp_path / "loud.zarr"))
    assert loud.returncode == 0, loud.stderr
    assert "Loading weights" in loud.stderr


def test_silencing_sets_the_switches_libraries_read(monkeypatch):
    import huggingface_hub.utils

    from scircuits.platform.common.progress import QUIET_ENV, silence_library_progress_bars

    for name in QUIET_ENV:
        monkeypatch.delenv(name, raising=False)
    try:
        silence_library_progress_bars()
        for name, value in QUIET_ENV.items():
            assert os.environ[name] == value
        assert huggingface_hub.utils.are_progress_bars_disabled()
    finally:
        huggingface_hub.utils.enable_progress_bars()
