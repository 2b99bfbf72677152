"""The plugins that failed to load, said once per process by the commands that do work (the listing
commands print them too): a study run without a broken plugin's analysis says why it is missing."""

from __future__ import annotations

from typing import Any

from scircuits.platform.common.logs import get_logger

log = get_logger(__name__)
_said: set[tuple[str, str]] = set()


def warn_failed_plugins(plugins: Any) -> None:
    for failed in plugins.failed():
        key = (str(failed.name), str(failed.error))
        if key not in _said:
            _said.add(key)
            log.warning(
                f"warning: plugin {failed.name} failed to load, so its objects are not used: "
                f"{failed.error} (`scircuits plugins` lists every plugin)"
            )
