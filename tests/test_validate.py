"""`scircuits validate sae`: every variant recovers a planted sparse dictionary (MMCS >= 0.9)."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner

from scircuits.cli.train import validate
from scircuits.platform.manager.plugin_set import get_plugins
from scircuits.platform.train.metrics import mean_max_cosine
from scircuits.platform.train.validation import PlantedDictionary, PlantedSetup


def test_every_variant_recovers_the_planted_dictionary():
    result = CliRunner().invoke(validate, ["sae", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    rows = {r["sae"]: r for r in report["results"]}
    # every registered variant, a plugin's too (the example's tied-relu when it is installed)
    assert set(rows) == set(get_plugins().saes.names()) >= {"relu", "topk", "batchtopk", "jumprelu", "gated"}
    for name, row in rows.items():
        assert row["mmcs"] >= 0.9 and row["passed"], (name, row)
        assert row["recovered"] >= 0.5, (name, row)


def test_table_and_failure_exit_code():
    runner = CliRunner()
    result = runner.invoke(validate, ["sae", "--sae", "topk", "--tokens", "256", "--epochs", "1"])
    assert result.exit_code == 1
    assert "MMCS" in result.output and "topk" in result.output and "NO" in result.output


def test_planted_data_and_mmcs():
    setup = PlantedSetup(d_in=8, n_atoms=16, n_tokens=100)
    data = PlantedDictionary(setup)
    assert torch.allclose(data.atoms.norm(dim=1), torch.ones(16))
    x = data.sample(2000)
    assert x.shape == (2000, 8)
    assert mean_max_cosine(data.atoms, data.atoms)["mmcs"] > 0.999
    noise = torch.randn(32, 8)
    assert mean_max_cosine(noise, data.atoms)["recovered"] < 0.5
