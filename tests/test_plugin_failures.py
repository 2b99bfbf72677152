"""A plugin that failed to load is said by the commands that do work, once per process."""

from __future__ import annotations

from types import SimpleNamespace

from scircuits.platform.manager.failures import warn_failed_plugins


def test_a_failed_plugin_is_warned_once(capsys):
    broken = SimpleNamespace(
        name="broken-dist", errors=["import failed: ImportError: no module named x", "second"]
    )
    plugins = SimpleNamespace(failed=lambda: [broken])
    warn_failed_plugins(plugins)
    first = capsys.readouterr().err
    warn_failed_plugins(plugins)
    assert capsys.readouterr().err == ""  # said once per process
    for line in (
        "warning: plugin broken-dist: import failed: ImportError: no module named x "
        "(`scircuits plugins` lists every plugin)",
        "warning: plugin broken-dist: second (`scircuits plugins` lists every plugin)",
    ):
        assert line in first.splitlines()
