"""The sbatch script submitit writes for a request (also what the dry run prints)."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

from hpcbench.slurm.resources import SlurmRequest


def submitit_command(folder: Path, python: str = sys.executable) -> str:
    """The command submitit's SlurmExecutor runs in each task (its `_submitit_command_str`)."""
    return " ".join([shlex.quote(python), "-u -m submitit.core._submit", shlex.quote(str(folder))])


def sbatch_script(request: SlurmRequest, job_name: str, folder: Path, array_size: Optional[int] = None,
                  signal_delay_s: int = 90, python: Optional[str] = None) -> str:
    """The script calls the request's interpreter (the profile's hardware.python), else `python`,
    else this one."""
    # submitit's own generator, so the dry run shows exactly what a submission writes.
    from submitit.slurm.slurm import _make_sbatch_string

    python = request.python or python or sys.executable
    return _make_sbatch_string(command=submitit_command(folder, python), folder=folder, map_count=array_size,
                               signal_delay_s=signal_delay_s, **request.sbatch_parameters(job_name))
