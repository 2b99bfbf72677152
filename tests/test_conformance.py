"""The conformance suites of scircuits.testing.conformance over every plugin installed here (the
built-ins and the example plugin), as a plugin author runs them on their own package."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from scircuits.testing import conformance
from scircuits.testing.conformance import (  # noqa: F401 - collected by pytest from here
    test_ablation_is_identity_outside_the_indices_and_never_in_place,
    test_benchmark_ids_are_unique_and_deterministic,
    test_benchmark_refuses_an_unknown_split_and_option,
    test_model_adapter_splices_exactly_at_every_site,
    test_sae_checkpoint_round_trip_is_bit_exact,
    test_sae_training_steps_lower_the_loss,
    test_sae_variant_builds_a_module_of_the_declared_architecture,
    test_the_selected_plugins_loaded,
)
from tests.conftest import SHARED_DATA

# benchmark name -> its folder in ../shared/data
SHARED_FOLDERS = {"gsm8k": "gsm8k", "math": "math", "logic": "logiqa"}


@pytest.fixture(autouse=True)
def _shared_benchmark_data(monkeypatch, tmp_path_factory):
    root = tmp_path_factory.mktemp("conformance-data")
    for name, folder in SHARED_FOLDERS.items():
        (root / name).symlink_to(SHARED_DATA / folder)
    monkeypatch.setenv(conformance.DATA_ENV, str(root))


def test_a_third_party_variant_is_checked_without_being_named_anywhere():
    ids = {param.id for param in conformance.registered("saes")}
    assert "example:tied-relu" in ids and "builtin:saes:relu" in ids


def test_the_documented_command_runs_one_plugins_suite(tmp_path):
    env = {**os.environ, conformance.PLUGINS_ENV: "example"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "--pyargs",
            "scircuits.testing.conformance",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    # only the example plugin's objects: tied-relu (3 tests), capitals (2), sign-flip (1), the
    # example-qwen2 adapter splicing exactly on a tiny Qwen2 config (1), + loading
    counts = dict(
        (word, int(n)) for n, word in re.findall(r"(\d+) (passed|skipped|failed|deselected)", result.stdout)
    )
    assert counts == {"passed": 8}, result.stdout[-2000:]


def test_a_variant_whose_build_returns_no_sae_is_one_line_naming_it():
    import torch

    from scircuits import ConfigError, SAEVariant

    class Linear(SAEVariant):
        name = "linear-not-sae"

        def build(self, d_in, d_sae, hparams=None):
            return torch.nn.Linear(d_in, d_sae)

    with pytest.raises(ConfigError, match=r"variant 'linear-not-sae': build returned a Linear, not a"):
        Linear().make(4, 8)
