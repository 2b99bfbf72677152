"""The roots of every user-facing error: the CLI prints their message (exit code 2), never a traceback.

This module imports nothing, so every layer (the store at the bottom, the platform above it, plugins)
raises these without depending on another layer. ``scircuits`` and
``scircuits.platform.contract.errors`` re-export them.
"""


class ScircuitsError(Exception):
    """Base for every error whose message tells the user what was wrong and what to do."""

    def _render_traceback_(self) -> list[str]:
        """What IPython and Jupyter show for it: the one line the CLI prints, no traceback."""
        return [f"{type(self).__name__}: {self}"]


class ConfigError(ScircuitsError):
    """A setting, argument or option has a value that cannot work; the message names it."""


class DataFormatError(ScircuitsError):
    """A malformed data file: the message names the file, the line and what was expected."""
