"""A plugin that failed to load is said by the commands that do work, once per process."""

from __future__ import annotations

from types import SimpleNamespace

from scircuits.platform.manager.failures import warn_failed_plugins


def test_a_failed_plugin_is_warned_once(capsys):
    broken = SimpleNamespace(name="broken-dist", error="import failed: ImportError: no module named x")
    plugins = SimpleNamespace(failed=lambda: [broken])
    warn_failed_plugins(plugins)
    warn_failed_plugins(plugins)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "warning: plugin broken-dist failed to load, so its objects are not used: import failed: "
        "ImportError: no module named x (`scircuits plugins` lists every plugin)"
    ]
