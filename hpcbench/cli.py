"""Command-line plumbing shared by the entry points: bad input becomes one line and a non-zero
exit, not a traceback."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, NoReturn, Tuple, Type

from hpcbench.errors import HpcbenchError, message_line

# Lines of Hydra/OmegaConf messages that explain internals rather than the problem.
_NOISE = ("object_type=", "reference_type=", "HYDRA_FULL_ERROR", "full_key:", "Config search path", "provider=")


def one_line(error: BaseException) -> str:
    """Hydra and OmegaConf errors span several lines (and a cause); keep what names the problem."""
    lines = []
    for part in (error, error.__cause__):
        if part is None:
            continue
        lines += [line.strip() for line in str(part).splitlines() if line.strip()]
        key = getattr(part, "full_key", None)
        if key:
            lines.append(f"(key: {key})")
    kept = [line for line in lines if not line.startswith(_NOISE) and "HYDRA_FULL_ERROR" not in line]
    return " ".join(dict.fromkeys(kept))  # drop repeats, keep order


def fail(program: str, message: str, code: int = 1) -> NoReturn:
    sys.stderr.write(f"{program}: error: {message}\n")
    raise SystemExit(code)


def _config_errors() -> Tuple[Type[BaseException], ...]:
    """Hydra's and OmegaConf's errors, imported when an error is being handled: commands that
    compose no config (hpcbench-report, -status) start 0.2 s sooner without Hydra."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return HydraException, OmegaConfBaseException


@contextmanager
def one_line_errors(program: str, show_traceback: bool = False) -> Iterator[None]:
    """Turn the errors a user can act on into one line on stderr and a non-zero exit."""
    try:
        yield
    except HpcbenchError as error:
        if error.quiet:
            raise SystemExit(error.exit_code) from None
        fail(program, message_line(error) or type(error).__name__, error.exit_code)
    except _config_errors() as error:
        if show_traceback:
            raise
        fail(program, one_line(error), 2)
    except OSError as error:  # a directory that cannot be created or written, a missing file
        # One raised in a DataLoader worker arrives without a file name, its message the worker's traceback.
        fail(program, f"{error.strerror or error}: {error.filename}" if error.filename else message_line(error), 1)
    except KeyboardInterrupt:
        fail(program, "interrupted", 130)


def run_hydra_app(app: Callable[[], object], program: str) -> None:
    """Run a @hydra.main app so that known errors print as one line. HYDRA_FULL_ERROR=1 set by the
    user still shows Hydra's full traceback."""
    user_wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # make Hydra re-raise instead of printing and exiting
    with one_line_errors(program, user_wants_traceback):
        app()
