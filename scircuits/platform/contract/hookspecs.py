"""The plugin contract: one registration hook per plugin family (the pattern of `llm`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "scircuits"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_models(register: Callable[[Any], None]) -> None:
    """Register ModelAdapter instances: ``register(adapter)``."""


@hookspec
def register_benchmarks(register: Callable[[Any], None]) -> None:
    """Register Benchmark instances: ``register(benchmark)``."""


@hookspec
def register_sae_variants(register: Callable[[Any], None]) -> None:
    """Register SAEVariant instances: ``register(variant)``."""


@hookspec
def register_ablations(register: Callable[[Any], None]) -> None:
    """Register Ablation instances: ``register(ablation)``."""


@hookspec
def register_synth_tasks(register: Callable[[Any], None]) -> None:
    """Register SynthTask instances (synthetic tasks with known variables): ``register(task)``."""


@hookspec
def register_sae_sources(register: Callable[[Any], None]) -> None:
    """Register SAESource instances (published checkpoint layouts and schemes): ``register(source)``."""


FAMILY_HOOKS: dict[str, str] = {
    "models": "register_models",
    "benchmarks": "register_benchmarks",
    "saes": "register_sae_variants",
    "ablations": "register_ablations",
    "synth_tasks": "register_synth_tasks",
    "sae_sources": "register_sae_sources",
}


@hookspec
def register_analyses(register: Callable[[Any], None]) -> None:
    """Register Analysis instances of the causal study: ``register(analysis)``."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add click commands to the ``scircuits`` command group: ``@cli.command()`` (as in `llm`)."""


def hook_names() -> list[str]:
    """Every hook a plugin may implement, in the order this module declares them."""
    return [name for name, value in globals().items() if hasattr(value, f"{PROJECT}_spec")]
