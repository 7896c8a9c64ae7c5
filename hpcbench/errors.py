"""Errors a user can act on. Each is reported as one line and a non-zero exit, no traceback."""


class HpcbenchError(Exception):
    """Base class: the message alone tells the user what is wrong and what to do."""

    exit_code = 1
    quiet = False  # True: another process reports it (ranks other than 0); exit without a word


class ConfigError(HpcbenchError):
    """A config value is invalid or inconsistent."""

    exit_code = 2


class DataError(HpcbenchError):
    """A data set is missing, empty or unreadable."""


class WeightsError(HpcbenchError):
    """Pretrained weights are missing or do not match the model."""


class DeviceError(HpcbenchError):
    """The requested device is not available here."""
