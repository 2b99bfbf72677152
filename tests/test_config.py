"""Stage configs: file + flag merging, validation errors by field name, config hashes."""

from __future__ import annotations

import pytest

from scircuits.platform.config import CollectConfig, RunConfig, TrainConfig
from scircuits.platform.contract.errors import ConfigError


def test_toml_section_and_flag_override(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text('[collect]\nmodel = "gpt2-medium"\nlayer = 12\nbatch_size = 8\n[train]\nsae = "relu"\n')
    cfg = CollectConfig.from_sources(path, {"layer": 3, "limit": None})
    assert (cfg.model, cfg.layer, cfg.batch_size, cfg.limit) == ("gpt2-medium", 3, 8, None)
    assert TrainConfig.from_sources(path).sae == "relu"


def test_yaml_top_level(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("sae: batchtopk\nexpansion: 16\nhparams:\n  k: 64\n")
    cfg = TrainConfig.from_sources(path)
    assert (cfg.sae, cfg.expansion, cfg.hparams) == ("batchtopk", 16, {"k": 64})


def test_invalid_value_is_reported_by_field_and_reason():
    with pytest.raises(ConfigError) as err:
        CollectConfig.from_sources(None, {"batch_size": -1})
    assert "invalid collect config: batch_size: Input should be greater than 0 (got -1)" in str(err.value)


def test_unknown_field_and_bad_choice(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('sitee = "mlp"\nsite = "embed"\n')
    with pytest.raises(ConfigError) as err:
        CollectConfig.from_sources(path)
    message = str(err.value)
    assert "sitee: Extra inputs are not permitted" in message
    assert "site: Input should be 'resid', 'mlp' or 'attn'" in message


def test_unreadable_config_files(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist"):
        CollectConfig.from_sources(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("model = \n")
    with pytest.raises(ConfigError, match=r"is not valid TOML"):
        CollectConfig.from_sources(broken)
    other = tmp_path / "cfg.ini"
    other.write_text("x")
    with pytest.raises(ConfigError, match=r"use a .toml, .yaml or .yml file"):
        CollectConfig.from_sources(other)


def test_config_hash_ignores_volatile_fields_only():
    base = RunConfig()
    assert base.config_hash() == RunConfig(out="elsewhere", device="cuda:0").config_hash()
    assert base.config_hash() != RunConfig(layer=3).config_hash()
    assert CollectConfig(batch_size=4).config_hash() == CollectConfig(batch_size=32).config_hash()
    assert CollectConfig(dtype="float32").config_hash() != CollectConfig().config_hash()
