"""Name -> plugin object, with clear errors on unknown and duplicate names."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from scircuits.platform.contract.errors import PluginConflictError, UnknownNameError

T = TypeVar("T")

SINGULAR = {
    "analyses": "analysis",
    "saes": "SAE variant",
    "sae_sources": "SAE source",
    "synth_tasks": "synth task",
}


@dataclass
class Registry(Generic[T]):
    """Objects of one plugin family, keyed by their ``name``.

    A name ending in ':' is a prefix handler: ``get("hf:org/model")`` asks the object registered
    as ``"hf:"`` for ``specialize("org/model")``.
    """

    family: str  # plural, for messages: "models"
    _items: dict[str, T] = field(default_factory=dict)
    _owners: dict[str, str] = field(default_factory=dict)
    _conflicts: dict[str, list[str]] = field(default_factory=dict)
    _builtin: set[str] = field(default_factory=set)

    @property
    def kind(self) -> str:
        """The family's singular, for messages: "model", "analysis"."""
        return SINGULAR.get(self.family, self.family[:-1])

    def add(self, obj: T, owner: str, builtin: bool = False) -> None:
        """Register ``obj`` under its name; PluginConflictError when the name is taken.

        A built-in keeps its name: a third-party object of the same name is refused alone. Two
        third-party objects of one name are both withdrawn, and ``get`` of the name says why.
        """
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{type(obj).__name__} registered by {owner} has no string 'name'")
        if name in self._builtin and not builtin:
            raise PluginConflictError(
                f"{self.kind} name {name!r} is taken by the built-in plugin {self._owners[name]}; "
                f"{owner}'s {self.kind} {name!r} is not registered: rename it (names are global across "
                "installed plugins)"
            )
        if name in self._items or name in self._conflicts:
            owners = self._conflicts.setdefault(name, [self._owners.pop(name, "?")])
            owners.append(owner)
            self._items.pop(name, None)
            raise PluginConflictError(self._conflict_message(name))
        self._items[name] = obj
        self._owners[name] = owner
        if builtin:
            self._builtin.add(name)

    def _conflict_message(self, name: str) -> str:
        return (
            f"{self.kind} name {name!r} is registered by more than one plugin: "
            f"{' and '.join(self._conflicts[name])}, so neither is registered. Rename one (names are "
            "global across installed plugins), uninstall one, or exclude one with SCIRCUITS_LOAD_PLUGINS."
        )

    def default(self) -> str:
        """The name of the family's default: the object whose class says ``default = True``.

        Built-in plugins' defaults win: a third-party plugin's claim counts only where no built-in
        object claims the family (the user names another object in the config to use it). Two
        claims at the same level are an error naming both.
        """
        claims = [n for n, obj in self._items.items() if getattr(obj, "default", False) is True]
        builtin = [n for n in claims if n in self._builtin]
        chosen = builtin or claims
        if len(chosen) > 1:
            owners = " and ".join(f"{n!r} ({self._owners[n]})" for n in sorted(chosen))
            raise PluginConflictError(
                f"more than one default {self.kind}: {owners} both set default = True. "
                f"Set it on one only, or exclude a plugin with SCIRCUITS_LOAD_PLUGINS."
            )
        if not chosen:
            raise UnknownNameError(
                f"no default {self.kind}: no registered plugin sets default = True; "
                f"name one (see `scircuits {self.family}`)."
            )
        return chosen[0]

    def is_default(self, name: str) -> bool:
        try:
            return self.default() == name
        except (PluginConflictError, UnknownNameError):
            return False

    def get(self, name: str) -> T:
        if name in self._conflicts:
            raise PluginConflictError(self._conflict_message(name))
        if name in self._items:
            handler = self._items[name]
            if name.endswith(":") and hasattr(handler, "specialize"):
                return handler.specialize(
                    ""
                )  # a prefix alone ("hf:") names nothing: its handler says what to give
            return handler
        if ":" in name:
            prefix = name.split(":", 1)[0] + ":"
            handler = self._items.get(prefix)
            if handler is not None:
                return handler.specialize(name[len(prefix) :])  # type: ignore[attr-defined]
        known = sorted(self._items)
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(
            f"Unknown {self.kind} {name!r}.{hint} Known {self.family}: {', '.join(known) or '(none)'}."
        )

    def owner(self, name: str) -> str:
        return self._owners[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items[n] for n in sorted(self._items))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)
