"""Library exceptions.  The CLI turns each into a one-line message and exit code 2."""


class L2LAppError(Exception):
    """Base class: the message says what was received, what is allowed, and the fix."""


class ConfigError(L2LAppError):
    """An option value or combination of options is invalid."""


class DataError(L2LAppError):
    """A dataset path, file or split cannot be used."""


class CheckpointError(L2LAppError):
    """A checkpoint or run directory cannot be read or written."""
