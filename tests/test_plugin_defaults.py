"""Each plugin family's default is declared by a plugin (``default = True``), never named by the core:
exactly one per family, built-in defaults win over a third-party claim, and a config that leaves a
plugin field out resolves to the same config (and hash) as one that names the default."""

from __future__ import annotations

import pytest

from scircuits.platform.config import AblateConfig, CollectConfig, RunConfig, TrainConfig
from scircuits.platform.contract.ablations import Ablation
from scircuits.platform.contract.errors import PluginConflictError, UnknownNameError
from scircuits.platform.manager.plugin_set import load_plugins
from scircuits.platform.manager.registry import Registry


def test_every_family_has_exactly_one_builtin_default():
    plugins = load_plugins(entry_points_too=False)
    for family, registry in plugins.registries.items():
        claims = [o.name for o in registry if getattr(o, "default", False) is True]
        assert len(claims) == 1, (family, claims)
        assert registry.default() == claims[0]


class Claiming(Ablation):
    default = True

    def __init__(self, name: str) -> None:
        self.name = name


def test_two_claims_at_the_same_level_name_both():
    registry: Registry[Ablation] = Registry("ablations")
    registry.add(Claiming("first"), owner="plugin-a")
    registry.add(Claiming("second"), owner="plugin-b")
    with pytest.raises(PluginConflictError, match=r"'first' \(plugin-a\) and 'second' \(plugin-b\)"):
        registry.default()


def test_a_builtin_default_wins_over_a_third_party_claim():
    registry: Registry[Ablation] = Registry("ablations")
    registry.add(Claiming("theirs"), owner="third-party")
    registry.add(Claiming("ours"), owner="builtin:ablations", builtin=True)
    assert registry.default() == "ours"
    alone: Registry[Ablation] = Registry("ablations")
    alone.add(Claiming("theirs"), owner="third-party")
    assert alone.default() == "theirs"  # no built-in claims this family


def test_no_claim_is_a_clear_error():
    registry: Registry[Ablation] = Registry("ablations")
    with pytest.raises(UnknownNameError, match="no default ablation"):
        registry.default()


def test_left_out_plugin_fields_resolve_to_the_defaults_before_hashing():
    plugins = load_plugins(entry_points_too=False)
    named = {f: plugins.registries[fam].default() for f, fam in AblateConfig.plugin_fields.items()}
    for cls in (CollectConfig, TrainConfig, AblateConfig):
        given = {f: plugins.registries[fam].default() for f, fam in cls.plugin_fields.items()}
        resolved = cls().with_plugin_defaults(plugins)
        assert resolved == cls(**given)
        assert resolved.config_hash() == cls(**given).config_hash()
    run = RunConfig().with_plugin_defaults(plugins)
    assert run.model == named["model"] and run.benchmark == named["benchmark"]
    assert run.ablate.ablation == named["ablation"] and run.train.sae == plugins.saes.default()
    explicit = RunConfig(
        model=run.model, benchmark=run.benchmark, sae=run.train.sae, ablation=run.ablate.ablation
    )
    assert run.model_dump() == explicit.model_dump()
