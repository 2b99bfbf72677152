"""Errors a user can act on. The CLI prints their message, never a traceback."""


class ScircuitsError(Exception):
    """Base for every error whose message tells the user what was wrong and what to do."""


class UnknownNameError(ScircuitsError, KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class PluginConflictError(ScircuitsError):
    pass


class ConfigError(ScircuitsError):
    pass


class DataFormatError(ScircuitsError):
    """A malformed data file: the message names the file, the line and what was expected."""


class WeightsUnavailableError(ScircuitsError):
    pass
