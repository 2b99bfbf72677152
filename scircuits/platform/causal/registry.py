"""The registered analyses of a plugin set, in the order the study runs them.

Plugins (built-ins included) implement ``register_analyses(register)``; this module calls each
loaded plugin's hook, records a failure on that plugin (``scircuits plugins`` shows it) without
stopping the others, and orders the analyses by (``order``, name), checking their ``after``.
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

from scircuits.platform.contract.analyses import Analysis
from scircuits.platform.contract.errors import ConfigError
from scircuits.platform.contract.study import StudyResults
from scircuits.platform.manager.plugin_set import PluginInfo, run_registration
from scircuits.platform.manager.registry import Registry

HOOK = "register_analyses"
_cache: WeakKeyDictionary[Any, Registry[Analysis]] = WeakKeyDictionary()


def analyses_of(plugins: Any) -> Registry[Analysis]:
    """The analyses registered by the plugins of ``plugins`` (a PluginSet), collected once per set."""
    if plugins in _cache:
        return _cache[plugins]
    registry: Registry[Analysis] = Registry("analyses")
    for name, module in plugins.pm.list_name_plugin():
        impl = getattr(module, HOOK, None)
        if impl is None or not hasattr(impl, "scircuits_impl"):
            continue
        info = plugins.plugins.setdefault(name, PluginInfo(name=name, module=str(module), builtin=False))
        run_registration(impl, HOOK, registry, Analysis, info)
    _cache[plugins] = registry
    return registry


def study_order(analyses: Registry[Analysis]) -> list[Analysis]:
    """Every registered analysis by (order, name); ConfigError when one reads an analysis that does
    not run before it, or two write the same results.json field."""
    ordered = sorted(analyses, key=lambda a: (a.order, a.name))
    seen: set[str] = set()
    owners: dict[str, str] = {key: "the study itself" for key in StudyResults.model_fields}
    for analysis in ordered:
        for needed in analysis.after:
            if needed not in seen:
                where = "is not registered" if needed not in analyses else "runs after it (higher order)"
                raise ConfigError(
                    f"analysis {analysis.name!r} ({analyses.owner(analysis.name)}) reads {needed!r}, which "
                    f"{where}; install the plugin that provides it or exclude {analysis.name!r}'s plugin"
                )
        for key in analysis.Result.model_fields:
            if key in owners:
                first = owners[key]
                of = f" (plugin {analyses.owner(first)})" if first in analyses else ""
                raise ConfigError(
                    f"analyses {first!r}{of} and {analysis.name!r} (plugin {analyses.owner(analysis.name)}) "
                    f"both write the results.json field {key!r}; rename the field in one of them"
                )
            owners[key] = analysis.name
        seen.add(analysis.name)
    return ordered
