"""Progress for long stages: a rich bar on a terminal, periodic plain lines elsewhere (CI, logs)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from scircuits.platform.common.logs import QUIET_ENV, get_logger, silence_library_progress_bars

log = get_logger(__name__)


class Progress:
    def __init__(self, description: str, total: float | None, enabled: bool, unit: str = "") -> None:
        self.description, self.total, self.enabled, self.unit = description, total, enabled, unit
        self.done = 0.0
        self.status = ""
        self._bar: Any = None
        self._task: Any = None
        self._last_line = 0.0
        self._start = time.monotonic()

    def advance(self, n: float = 1, status: str | None = None) -> None:
        self.done += n
        if status is not None:
            self.status = status
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, advance=n, status=self.status)
        elif time.monotonic() - self._last_line >= 10:
            self._print_line()

    def _print_line(self) -> None:
        self._last_line = time.monotonic()
        total = f"/{self.total:g}" if self.total else ""
        rate = self.done / max(self._last_line - self._start, 1e-9)
        log.info(
            f"[{self.description}] {self.done:g}{total} {self.unit} ({rate:.1f}/s) {self.status}".rstrip()
        )


@contextmanager
def progress(
    description: str, total: float | None = None, enabled: bool = True, unit: str = ""
) -> Iterator[Progress]:
    enabled = enabled and log.isEnabledFor(logging.INFO)  # -q: no progress either
    p = Progress(description, total, enabled, unit)
    if enabled and sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        with RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            transient=False,
        ) as bar:
            p._bar, p._task = bar, bar.add_task(description, total=total, status="")
            yield p
    else:
        yield p
        if enabled:
            p._print_line()


__all__ = ["QUIET_ENV", "Progress", "progress", "silence_library_progress_bars"]
