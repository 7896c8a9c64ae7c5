"""The sbatch script submitit writes for a request (also what the dry run prints)."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any, Iterator, Optional, Tuple

from hpcbench.errors import ConfigError
from hpcbench.slurm.resources import SlurmRequest


def submitit_command(folder: Path, python: str = sys.executable) -> str:
    """The command submitit's SlurmExecutor runs in each task (its `_submitit_command_str`)."""
    return " ".join([shlex.quote(python), "-u -m submitit.core._submit", shlex.quote(str(folder))])


def sbatch_script(request: SlurmRequest, job_name: str, folder: Path, array_size: Optional[int] = None,
                  signal_delay_s: int = 90, python: Optional[str] = None, parallelism: Optional[int] = None) -> str:
    """The script calls the request's interpreter (the profile's hardware.python), else `python`,
    else this one. An array of `array_size` jobs runs `parallelism` of them at once (all: None)."""
    # submitit's own generator, so the dry run shows exactly what a submission writes.
    from submitit.slurm.slurm import _make_sbatch_string

    python = request.python or python or sys.executable
    return _make_sbatch_string(command=submitit_command(folder, python), folder=folder, map_count=array_size,
                               array_parallelism=parallelism or array_size or 1, signal_delay_s=signal_delay_s,
                               **request.sbatch_parameters(job_name))


def _script_values(request: SlurmRequest, job_name: str, folder: Path) -> Iterator[Tuple[str, Any]]:
    """(the key a user sets, its value) for every value that lands in the script. The setup lines
    are left out: they are shell lines by design."""
    yield "hydra.launcher.name", job_name
    yield "hydra.sweep.dir", folder
    for key, value in request.as_dict().items():
        if key == "additional_parameters":  # (name, value) pairs: both land on an #SBATCH line
            for name, option in value:
                yield f"hydra.launcher.additional_parameters.{name}", name
                yield f"hydra.launcher.additional_parameters.{name}", option
        elif key == "srun_args":
            yield from ((f"hydra.launcher.{key}", arg) for arg in value)
        elif key != "setup":
            yield ("hardware.python" if key == "python" else f"hydra.launcher.{key}"), value


def check_script_values(request: SlurmRequest, job_name: str, folder: Path) -> None:
    """Refuse a control character in any value the sbatch script holds: a newline in one would end
    its `#SBATCH` line and make the rest a shell command of the job (comment='x\\ntouch ~/pwned\\n#');
    quoting does not help on a comment line."""
    for key, value in _script_values(request, job_name, folder):
        bad = [char for char in ("" if value is None else str(value)) if ord(char) < 32 or ord(char) == 127]
        if bad:
            shown = key.encode("unicode_escape").decode()  # a name in additional_parameters may hold one too
            raise ConfigError(f"{shown} holds the control character {bad[0]!r}: it would break the line of the "
                              f"sbatch script it lands on (a newline starts a shell command); remove it")
