"""The platform's messages: one ``logging`` logger per module under ``scircuits``.

The ``scircuits`` logger writes each message as a bare line to the ``sys.stderr`` of the moment (so a
test's or a notebook's replacement receives it), at INFO unless ``$SCIRCUITS_LOG_LEVEL`` or
``set_level`` says otherwise; it does not propagate, so a root handler a notebook adds does not
print each line twice. Processes spawned by the platform (distributed ranks) read the level from the
environment, so ``-q``/``-v`` reach them too.
"""

from __future__ import annotations

import logging
import os
import sys

from scircuits.errors import ConfigError

LEVEL_ENV = "SCIRCUITS_LOG_LEVEL"
ROOT = "scircuits"


class StderrLines(logging.Handler):
    """Each record's message on its own line of the current ``sys.stderr``."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # logging must never raise into the work
            self.handleError(record)


def level_of(name: str | int | None) -> int:
    if isinstance(name, int):
        return name
    value = logging.getLevelName(str(name or "INFO").upper())
    return value if isinstance(value, int) else logging.INFO


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def set_level(level: str | int) -> None:
    """The level of every scircuits message in this process and the processes it spawns; ConfigError
    for a name that is no level."""
    if not isinstance(level, int) and (not isinstance(level, str) or level.upper() not in LEVELS):
        raise ConfigError(
            f"unknown log level {level!r}: give one of {', '.join(LEVELS)} (or a logging level number)"
        )
    value = level_of(level)
    logging.getLogger(ROOT).setLevel(value)
    if value > logging.INFO:  # -q: no progress, the libraries' bars included
        silence_library_progress_bars()
    global _exported
    if value == logging.INFO:  # the default: nothing to pass on
        os.environ.pop(LEVEL_ENV, None)
        _exported = None
    else:
        os.environ[LEVEL_ENV] = _exported = logging.getLevelName(value)


_exported: str | None = None  # the level set_level passed on to spawned processes


def user_level() -> str | None:
    """``$SCIRCUITS_LOG_LEVEL`` as the user (or a parent process) set it; None when unset or when it
    is only what ``set_level`` of this process passed on to its children."""
    value = os.environ.get(LEVEL_ENV)
    return value if value and value != _exported else None


QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # huggingface_hub downloads, and transformers' "Loading weights"
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",  # datasets' "Generating split" bars
    "TQDM_DISABLE": "1",  # plain tqdm bars (e.g. transformers' GGUF conversion), read when tqdm is imported
}


def silence_library_progress_bars() -> None:
    """``--no-progress``: turn off the progress bars of the libraries we call, in this process and its
    children (the variables), and in those libraries already imported (their switches)."""
    os.environ.update(QUIET_ENV)
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()


def _install() -> None:
    root = logging.getLogger(ROOT)
    # by name: a test that imports scircuits afresh (sys.modules cleared) makes a new StderrLines
    # class, and a second handler would print every message twice
    if not any(type(h).__name__ == StderrLines.__name__ for h in root.handlers):
        handler = StderrLines()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(level_of(os.environ.get(LEVEL_ENV)))


_install()


def get_logger(name: str) -> logging.Logger:
    """The logger of a module (``get_logger(__name__)``), under the ``scircuits`` logger."""
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")
