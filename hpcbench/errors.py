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


def message_line(error: BaseException) -> str:
    """The last line of an error's message, which names the problem. Left out: the Python frames
    torch appends to an error raised in a callback ("\n\nAt:\n  file(line): ..."), and the traceback
    and "module.Class: " a DataLoader worker's error arrives wrapped in."""
    text = str(error).split("\n\nAt:\n")[0].strip()
    last = text.splitlines()[-1].strip() if text else ""
    return last.removeprefix(f"{type(error).__module__}.{type(error).__name__}: ")


class OutOfMemory(HpcbenchError):
    """A process could not allocate the memory a step needed (host or device)."""
