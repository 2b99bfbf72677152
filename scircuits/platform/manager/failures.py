"""What the plugins could not register (an import that failed, a refused object), said once per
process by the commands that do work, as the listing commands print it: a study run without a broken
plugin's analysis says why it is missing."""

from __future__ import annotations

from typing import Any

from scircuits.platform.common.logs import get_logger

log = get_logger(__name__)
_said: set[tuple[str, str]] = set()
LISTING = "`scircuits plugins` lists every plugin"


def warn_failed_plugins(plugins: Any) -> None:
    for failed in plugins.failed():
        for error in getattr(failed, "errors", None) or [failed.error]:
            key = (str(failed.name), str(error))
            if key not in _said:
                _said.add(key)
                log.warning(f"warning: plugin {failed.name}: {error} ({LISTING})")
