"""Plugin manager: built-in plugin modules and entry points of group "scircuits", loaded the same way.

A plugin that fails to import, whose hook implementations match no hook specification, or whose
registration raises, is recorded with its error and never stops the CLI. ``SCIRCUITS_LOAD_PLUGINS``
is the rescue switch: a comma-separated allow-list of entry-point plugin names (empty loads none).
"""

from __future__ import annotations

import importlib
import inspect
import os
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

import pluggy

from scircuits.platform.contract import hookspecs
from scircuits.platform.contract.ablations import Ablation
from scircuits.platform.contract.benchmarks import Benchmark
from scircuits.platform.contract.errors import PluginConflictError
from scircuits.platform.contract.models import ModelAdapter
from scircuits.platform.contract.sae_sources import SAESource
from scircuits.platform.contract.saes import SAEVariant
from scircuits.platform.contract.synth_tasks import SynthTask
from scircuits.platform.manager.registry import Registry
from scircuits.version import __version__

ENTRY_POINT_GROUP = "scircuits"
ALLOW_LIST_ENV = "SCIRCUITS_LOAD_PLUGINS"

BUILTIN_MODULES: tuple[str, ...] = (
    "scircuits.plugins.models",
    "scircuits.plugins.benchmarks",
    "scircuits.plugins.saes",
    "scircuits.plugins.sae_sources",
    "scircuits.plugins.ablations",
    "scircuits.plugins.analyses",
    "scircuits.plugins.synth",
)


@dataclass
class PluginInfo:
    name: str
    module: str
    builtin: bool
    distribution: str | None = None
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    traceback: str | None = field(default=None, repr=False)  # of an import failure, for debugging

    @property
    def error(self) -> str | None:
        """Every error of the plugin, joined with "; " (None when it has none)."""
        return "; ".join(self.errors) or None

    @error.setter
    def error(self, message: str) -> None:
        self.errors.append(message)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "error": self.error}


FAMILY_BASES: dict[str, type] = {
    "models": ModelAdapter,
    "benchmarks": Benchmark,
    "saes": SAEVariant,
    "ablations": Ablation,
    "synth_tasks": SynthTask,
    "sae_sources": SAESource,
}


def _family_base(family: str) -> type:
    return FAMILY_BASES[family]


class PluginSet:
    """Every loaded plugin and the registries they filled (one per family of ``FAMILY_HOOKS``)."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.registries: dict[str, Registry[Any]] = {f: Registry(f) for f in hookspecs.FAMILY_HOOKS}

    @property
    def models(self) -> Registry[Any]:
        return self.registries["models"]

    @property
    def benchmarks(self) -> Registry[Any]:
        return self.registries["benchmarks"]

    @property
    def saes(self) -> Registry[Any]:
        return self.registries["saes"]

    @property
    def ablations(self) -> Registry[Any]:
        return self.registries["ablations"]

    @property
    def synth_tasks(self) -> Registry[Any]:
        return self.registries["synth_tasks"]

    @property
    def sae_sources(self) -> Registry[Any]:
        return self.registries["sae_sources"]

    def failed(self) -> list[PluginInfo]:
        return [p for p in self.plugins.values() if p.error]

    # -- loading ---------------------------------------------------------------------------

    def add_module(self, name: str, load: Callable[[], ModuleType], info: PluginInfo) -> None:
        self.plugins[name] = info
        try:
            module = load()
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            info.error = f"import failed: {type(exc).__name__}: {exc}"
            info.traceback = traceback.format_exc()
            return
        info.module = getattr(module, "__name__", info.module)
        unknown = [
            attr
            for attr in dir(module)
            if hasattr(getattr(module, attr, None), f"{hookspecs.PROJECT}_impl")
            and not hasattr(self.pm.hook, attr)
        ]
        if unknown:
            known = ", ".join(hookspecs.hook_names())
            info.error = (
                f"hook implementation {', '.join(map(repr, unknown))} matches no hook; known hooks: {known}"
            )
            return
        unmarked = [
            attr
            for attr in hookspecs.hook_names()
            if callable(getattr(module, attr, None))
            and not hasattr(getattr(module, attr), f"{hookspecs.PROJECT}_impl")
        ]
        for attr in unmarked:  # pluggy would skip it without a word
            info.error = f"{attr} is not marked as a hook: put @scircuits.hookimpl above it"
        try:
            self.pm.register(module, name=name)
        except Exception as exc:  # pluggy.PluginValidationError: wrong arguments, etc.
            info.error = (
                self._wrong_arguments(module) or f"invalid hook implementation: {' '.join(str(exc).split())}"
            )
            return
        info.hooks = sorted(h.name for h in self.pm.get_hookcallers(module) or [])
        self._run_registrations(name, module, info)

    def _wrong_arguments(self, module: ModuleType) -> str | None:
        """What to fix in the first hook implementation of ``module`` that takes an argument its hook
        does not pass (None when none does)."""
        for attr in dir(module):
            impl = getattr(module, attr, None)
            if not hasattr(impl, f"{hookspecs.PROJECT}_impl") or not callable(impl):
                continue
            spec = getattr(self.pm.hook, attr).spec
            wanted = list(spec.argnames) if spec is not None else []
            try:
                params = inspect.signature(impl).parameters.values()
            except (TypeError, ValueError):
                continue
            given = [
                p.name
                for p in params
                if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            ]
            unknown = [a for a in given if a not in wanted]
            if unknown:
                return (
                    f"invalid hook implementation {attr}({', '.join(given)}): the hook passes no "
                    f"{', '.join(map(repr, unknown))}; write def {attr}({', '.join(wanted)})"
                )
        return None

    def _run_registrations(self, name: str, module: ModuleType, info: PluginInfo) -> None:
        for family, hook_name in hookspecs.FAMILY_HOOKS.items():
            impl = getattr(module, hook_name, None)
            if impl is None or not hasattr(impl, f"{hookspecs.PROJECT}_impl"):
                continue
            run_registration(impl, hook_name, self.registries[family], _family_base(family), info)

    def load_builtins(self) -> None:
        for module_name in BUILTIN_MODULES:
            short = module_name.rsplit(".", 1)[-1]
            info = PluginInfo(
                name=f"builtin:{short}",
                module=module_name,
                builtin=True,
                distribution="scircuits",
                version=__version__,
            )
            self.add_module(info.name, lambda m=module_name: importlib.import_module(m), info)

    def load_entry_points(self, allow: set[str] | None) -> None:
        installed = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
        names = sorted({ep.name for ep in installed})
        for unknown in sorted((allow or set()) - set(names)):  # a typo would drop every plugin silently
            self.plugins[unknown] = PluginInfo(
                name=unknown,
                module=ALLOW_LIST_ENV,
                builtin=False,
                errors=[
                    f"{ALLOW_LIST_ENV} names {unknown!r}, but no installed plugin is called that "
                    f"(installed: {', '.join(names) or 'none'}): fix the name, or unset the variable to "
                    "load every plugin"
                ],
            )
        for ep in installed:
            if allow is not None and ep.name not in allow:
                continue
            if ep.name in self.plugins:
                self.plugins[f"{ep.name} ({ep.value})"] = PluginInfo(
                    name=ep.name,
                    module=ep.value,
                    builtin=False,
                    errors=[
                        f"a plugin named {ep.name!r} is already loaded from "
                        f"{self.plugins[ep.name].module}; not loading {ep.value}: rename its entry point"
                    ],
                )
                continue
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                name=ep.name,
                module=ep.value,
                builtin=False,
                distribution=dist.name if dist else None,
                version=dist.version if dist else None,
            )
            self.add_module(ep.name, lambda e=ep: _load_entry_point(e), info)


def _article(word: str) -> str:
    return f"an {word}" if word[:1].lower() in "aeiou" else f"a {word}"


def run_registration(
    impl: Callable[..., Any], hook_name: str, registry: Registry[Any], base: type, info: PluginInfo
) -> None:
    """Call a plugin's registration hook with ``register``, adding what it registers to ``registry``
    and recording each refused object, and a hook that raises or returns a value, on ``info``; one
    refused object leaves the plugin's others registered."""
    added: list[str] = []

    def register(obj: Any) -> None:
        if not isinstance(obj, base):
            hint = (
                f": register an instance: {obj.__name__}()"
                if isinstance(obj, type) and issubclass(obj, base)
                else ""
            )
            info.error = f"{hook_name} registered {obj!r}, which is not {_article(base.__name__)}{hint}"
            return
        try:
            registry.add(obj, owner=info.name, builtin=info.builtin)
        except (PluginConflictError, TypeError) as exc:
            info.error = str(exc)
            return
        added.append(obj.name)

    try:
        returned = impl(register=register)
    except Exception as exc:
        info.error = f"{hook_name} raised {type(exc).__name__}: {exc}"
    else:
        if returned is not None:
            info.error = f"{hook_name} returned a value; call register(obj) instead"
    if added:
        info.registered[registry.family] = added


def _load_entry_point(ep: EntryPoint) -> ModuleType:
    obj = ep.load()
    if not isinstance(obj, ModuleType):
        raise TypeError(f"entry point {ep.name} = {ep.value!r} must name a module, got {type(obj).__name__}")
    return obj


def allow_list_from_env() -> set[str] | None:
    raw = os.environ.get(ALLOW_LIST_ENV)
    if raw is None:
        return None
    return {n.strip() for n in raw.split(",") if n.strip()}


def load_plugins(*, entry_points_too: bool = True) -> PluginSet:
    plugins = PluginSet()
    plugins.load_builtins()
    if entry_points_too:
        plugins.load_entry_points(allow_list_from_env())
    return plugins


@lru_cache(maxsize=1)
def get_plugins() -> PluginSet:
    """The process-wide plugin set (loaded once). Only the CLI and the top of the pipeline call it;
    library functions take the plugin set as an argument."""
    return load_plugins()
