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


def test_a_study_of_one_example_is_refused_before_any_work():
    """One example cannot be split into a ranking half and a measured half (the probes' held-out
    split raised a ValueError deep in the study, after collect and train had run)."""
    from scircuits.platform.config import AblateConfig, RunConfig

    with pytest.raises(ConfigError, match=r"limit: Input should be greater than 1 \(got 1\)"):
        AblateConfig.from_sources(None, {"sae": "x", "limit": 1})
    with pytest.raises(ConfigError, match=r"ablate\.limit: Input should be greater than 1"):
        RunConfig.from_sources(None, {"limit": 1})
    assert AblateConfig.from_sources(None, {"sae": "x", "limit": 2}).limit == 2


def test_unknown_field_and_bad_choice(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('sitee = "mlp"\nsite = "embed"\n')
    with pytest.raises(ConfigError) as err:
        CollectConfig.from_sources(path)
    message = str(err.value)
    assert "unknown setting 'sitee'; did you mean 'site'?" in message
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


def test_every_flag_is_generated_from_its_field_with_the_fields_help_and_default():
    import click

    from scircuits.cli.causal import ablate, run
    from scircuits.cli.collect import collect
    from scircuits.cli.train import train
    from scircuits.platform.config import AblateConfig
    from scircuits.platform.config.options import default_of, run_fields, shown_default

    for command, fields in (
        (collect, CollectConfig.model_fields),
        (train, TrainConfig.model_fields),
        (ablate, AblateConfig.model_fields),
        (run, run_fields()),
    ):
        options = {p.name: p for p in command.params if isinstance(p, click.Option)}
        for name, info in fields.items():
            if isinstance(default_of(info), dict) or name not in options:
                continue  # dict fields are read as KEY=VALUE pairs
            if command is train and name in {"store", "sae"}:
                continue  # dict fields, and train's --store/--sae that take several values
            option = options[name]
            assert option.help.startswith(info.description), (command.name, name)
            default = shown_default(default_of(info))
            assert default is None or option.help.endswith(f"[{default}]"), (command.name, name)
            assert option.default is None  # not given: the config file's value stands
        generated = {n for n, i in fields.items() if not isinstance(default_of(i), dict)}
        assert generated - {"store", "sae", "hparams"} <= set(options), command.name


def test_run_config_is_composed_of_the_stage_configs(tmp_path):
    from scircuits.platform.config.stages import RunAblate, RunTrain

    assert set(RunTrain.model_fields) < set(TrainConfig.model_fields)
    assert RunTrain.model_fields["lr"].description == TrainConfig.model_fields["lr"].description
    path = tmp_path / "run.toml"
    path.write_text("[run]\nlimit = 40\n[run.train]\ntokens = 5000\nlr = 0.01\n[run.ablate]\nexact_top = 4\n")
    config = RunConfig.from_sources(path, {"train_lr": 0.02, "top_k": [1, 2]})
    assert (config.train.tokens, config.train.lr) == (5000, 0.02)  # the flag wins over the table
    assert (config.ablate.limit, config.ablate.exact_top, config.ablate.top_k) == (40, 4, [1, 2])
    assert RunConfig().ablate.top_k == [1, 5, 20, 50] != RunAblate.model_fields["top_k"].default
    with pytest.raises(ConfigError, match=r"train\.lr: Input should be greater than 0"):
        RunConfig.from_sources(None, {"train_lr": -1})


def test_hashes_record_whether_a_path_is_given_not_where():
    from scircuits.platform.config import AblateConfig

    assert (
        AblateConfig(sae="/a/sae", store="/a/s").config_hash()
        == AblateConfig(sae="/b/x", store="/c").config_hash()
    )
    assert AblateConfig(sae="/a/sae", store="/a/s").config_hash() != AblateConfig(sae="/a/sae").config_hash()
    assert CollectConfig(model_path="/w1").config_hash() == CollectConfig(model_path="/w2").config_hash()
    assert TrainConfig(store="/a").config_hash() == TrainConfig(store="/b").config_hash()


def test_none_unsets_a_number_whose_help_offers_it_in_flags_files_and_the_api(tmp_path):
    from click.testing import CliRunner

    from scircuits.cli.train import train

    path = tmp_path / "c.toml"
    path.write_text('grad_clip = "none"\n')
    assert TrainConfig.from_sources(path).grad_clip is None
    assert TrainConfig.from_sources(None, {"grad_clip": "none"}).grad_clip is None
    assert TrainConfig(grad_clip="None").grad_clip is None
    assert RunConfig.from_sources(None, {"limit": "none"}).ablate.limit is None
    # the flag passes "none" through (a flag's None means "not given")
    option = next(p for p in train.params if p.name == "grad_clip")
    assert option.type.convert("none", option, None) == "none"
    assert option.type.convert("0.5", option, None) == 0.5
    result = CliRunner().invoke(train, ["--grad-clip", "bogus"])
    assert result.exit_code == 2 and "'bogus' is not a number or none" in result.output
    with pytest.raises(ConfigError):
        TrainConfig(grad_clip="nothing")
