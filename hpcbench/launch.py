"""Starting the MPI ranks of a DDP run from a plain `hpcbench-train mode=ddp` command.

The launch command is an argument list built from the hardware profile (mpiexec, mpirun, or srun
with its MPI plugin); no config value ever passes through a shell.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

from hpcbench.config import RunConfig
from hpcbench.errors import ConfigError, HpcbenchError
from hpcbench.rundir import RunDirectory
from hpcbench.slurm.resources import derive_request

log = logging.getLogger("hpcbench")


class RanksFailed(HpcbenchError):
    """The MPI job of a DDP run exited non-zero."""


def find_launcher(name: str) -> str:
    """The launcher next to this Python first (the venv's MPICH wheel), then PATH."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        raise ConfigError(
            f"hardware.mpi_launcher={name} is not installed here; pip install 'hpcbench[mpich]' "
            f"or load your cluster's MPI module"
        )
    return found


def mpi_command(run: RunConfig, program: List[str]) -> List[str]:
    ranks, nodes = str(run.mode.ranks), str(run.mode.nodes)
    hardware = run.hardware
    if hardware.mpi_launcher == "srun":
        return ["srun", f"--mpi={hardware.srun_mpi}", "--ntasks", ranks, "--nodes", nodes, *program]
    return [find_launcher(hardware.mpi_launcher), "-n", ranks, *program]


def worker_command(run_dir: Path) -> List[str]:
    return [sys.executable, "-m", "hpcbench.worker", str(run_dir)]


def launch_ranks(run: RunConfig, out_dir: Path) -> None:
    """Run the DDP ranks under MPI; they read the config from, and write into, `out_dir`."""
    derive_request(run)  # refuses more ranks, cores or GPUs than the hardware profile has
    run_dir = RunDirectory(out_dir)
    run_dir.write_config(run)
    command = mpi_command(run, worker_command(out_dir))
    log.info("starting %d MPI ranks: %s", run.mode.ranks, " ".join(command))
    returncode = subprocess.run(command, check=False).returncode
    if returncode != 0:
        run_dir.mark_failed_if_running(f"MPI job exited with status {returncode}")
        raise RanksFailed(f"the {run.mode.ranks} MPI ranks exited with status {returncode}; see {out_dir / 'train.log'}")
