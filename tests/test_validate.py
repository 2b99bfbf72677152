"""`scircuits validate sae`: the hard planted problem's table with its baselines (the default), and the
easy problem (every variant recovers a planted sparse dictionary, MMCS >= 0.9)."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner

from scircuits.cli.train import validate
from scircuits.platform.manager.plugin_set import load_plugins
from scircuits.platform.train.metrics import mean_max_cosine
from scircuits.platform.train.validation import PlantedDictionary, PlantedSetup


def test_every_builtin_variant_recovers_the_planted_dictionary():
    builtins = sorted(v.name for v in load_plugins(entry_points_too=False).saes)
    assert set(builtins) == {"relu", "topk", "batchtopk", "jumprelu", "gated"}
    args = ["sae", "--problem", "easy", "--json", "--sae", ",".join(builtins)]
    result = CliRunner().invoke(validate, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    rows = {r["sae"]: r for r in report["results"]}
    assert set(rows) == set(builtins)
    for name, row in rows.items():
        assert row["mmcs"] >= 0.9 and row["passed"], (name, row)
        assert row["recovered"] >= 0.5, (name, row)


def test_table_and_failure_exit_code():
    runner = CliRunner()
    result = runner.invoke(
        validate, ["sae", "--problem", "easy", "--sae", "topk", "--tokens", "256", "--epochs", "1"]
    )
    assert result.exit_code == 1
    assert "MMCS" in result.output and "topk" in result.output and "NO" in result.output


def test_the_default_is_the_hard_table_with_baselines_and_a_failing_exit_code():
    # far too few training tokens: topk must fail the MCC threshold, and the table must say so
    result = CliRunner().invoke(validate, ["sae", "--sae", "topk", "--tokens", "2048", "--json"])
    assert result.exit_code == 1, result.output
    table = json.loads(result.output[: result.output.rindex("}") + 1])
    rows = {r["name"]: r for r in table["rows"]}
    assert set(rows) == {"random decoder", "spherical k-means", "topk"}
    assert rows["random decoder"]["kind"] == "baseline" and rows["topk"]["passed"] is False
    assert rows["topk"]["note"]  # the likely cause is named
    assert table["setup"]["n_atoms"] >= 4 * table["setup"]["d_in"]
    text = CliRunner().invoke(validate, ["sae", "--sae", "topk", "--tokens", "2048"])
    assert "hard planted dictionary" in text.output and "spherical k-means" in text.output
    assert "mcc" in text.output and "MCC below 0.9 for: topk" in text.output


def test_planted_data_and_mmcs():
    setup = PlantedSetup(d_in=8, n_atoms=16, n_tokens=100)
    data = PlantedDictionary(setup)
    assert torch.allclose(data.atoms.norm(dim=1), torch.ones(16))
    x = data.sample(2000)
    assert x.shape == (2000, 8)
    assert mean_max_cosine(data.atoms, data.atoms)["mmcs"] > 0.999
    noise = torch.randn(32, 8)
    assert mean_max_cosine(noise, data.atoms)["recovered"] < 0.5
