"""Errors a user can act on. The CLI prints their message, never a traceback.

The three roots (ScircuitsError, ConfigError, DataFormatError) live in ``scircuits.errors`` so that
the store, below the platform, raises them too; they are re-exported here.
"""

from scircuits.errors import ConfigError, DataFormatError, ScircuitsError

__all__ = [
    "ConfigError",
    "DataFormatError",
    "PluginConflictError",
    "ResumableError",
    "ScircuitsError",
    "UnknownNameError",
    "WeightsUnavailableError",
]


class UnknownNameError(ScircuitsError, KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class PluginConflictError(ScircuitsError):
    pass


class WeightsUnavailableError(ScircuitsError):
    pass


class ResumableError(ScircuitsError):
    """A failure that left a saved state the same command continues with ``--resume`` (a lost
    worker of ``train --nproc``): an ``--out`` URL publishes that state, as a local folder keeps it."""
