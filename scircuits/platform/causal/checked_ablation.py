"""An ablation plugin's ``apply`` as the study calls it: on its own copy of the features, its result
checked, its failures one line naming the plugin.

A plugin that edits its input in place would otherwise edit the study's cached features (every
later condition measured on them, and the edit compared with itself: zero effects, no warning); one
that returns another shape, a non-tensor or NaN would fail deep inside the model or print NaN
intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from scircuits.platform.contract.errors import ConfigError, ScircuitsError

BUILTIN = "builtin:"


@dataclass
class CheckedAblation:
    inner: Any
    owner: str

    @property
    def name(self) -> str:
        return str(self.inner.name)

    def parse_options(self, options: Any) -> Any:
        return self.inner.parse_options(options)

    def apply(
        self, features: torch.Tensor, indices: torch.Tensor, stats: Any, options: Any, generator: Any
    ) -> torch.Tensor:
        if self.owner.startswith(BUILTIN):  # the built-ins' conformance tests hold them to this
            return self.inner.apply(features, indices, stats, options, generator)
        try:
            result = self.inner.apply(features.clone(), indices, stats, options, generator)
        except (ScircuitsError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise self.error(f"failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(result, torch.Tensor) or tuple(result.shape) != tuple(features.shape):
            got = type(result).__name__
            if isinstance(result, torch.Tensor):
                got = f"shape {tuple(result.shape)}"
            raise self.error(f"returned {got}, not a tensor of the features' shape {tuple(features.shape)}")
        if not bool(torch.isfinite(result).all()):
            raise self.error("returned NaN or infinite values")
        return result.to(features.dtype)

    def __getattr__(self, attribute: str) -> Any:  # the plugin's other attributes, as declared
        if attribute == "inner":
            raise AttributeError(attribute)
        return getattr(self.inner, attribute)

    def error(self, what: str) -> ConfigError:
        return ConfigError(
            f"ablation {self.name!r} of plugin {self.owner} {what}; fix the plugin, or choose another "
            "--ablation (`scircuits ablations`)"
        )


def checked(plugins: Any, name: str | None) -> CheckedAblation:
    """The registered ablation ``name`` (None: the default), wrapped."""
    resolved = name or plugins.ablations.default()
    return CheckedAblation(plugins.ablations.get(resolved), plugins.ablations.owner(resolved))
