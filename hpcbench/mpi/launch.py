"""Starting the MPI ranks of a DDP run from a plain `hpcbench-train mode=ddp` command.

The launch command is an argument list built from the hardware profile (mpiexec, mpirun, or srun
with its MPI plugin); no config value ever passes through a shell. Inside a Slurm allocation (an
`salloc` shell, a batch script) the ranks are the allocation's: srun starts them, whatever the
profile says, and the allocation's nodes and tasks bound the request. When the ranks fail, the
user gets one line naming the rank and host that failed first; the tracebacks stay in the run
directory (failure_records.py).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

from hpcbench.config import RunConfig
from hpcbench.errors import ConfigError, HpcbenchError
from hpcbench.failure_records import RANKS_DIR, failed_run_cause, read_failures
from hpcbench.mpi.topology import IMPLEMENTATION_NAMES
from hpcbench.rundir import RunDirectory, read_summary
from hpcbench.slurm.resources import derive_request, srun_rank_args

log = logging.getLogger("hpcbench")


class RanksFailed(HpcbenchError):
    """The MPI job of a DDP run exited non-zero."""


class RanksStopped(HpcbenchError):
    """The ranks stopped together (a stop signal, a diverged loss): the summary says why."""


# What to do where the profile's MPI launcher is missing.
INSTALL_ADVICE = {"mpich": "pip install 'hpcbench[mpich]' or load your cluster's MPICH module",
                  "openmpi": "load your cluster's Open MPI module (module load openmpi), or apt-get install openmpi-bin",
                  "intel": "load your cluster's Intel MPI module, or pip install --prefix DIR impi-rt and put DIR/bin on PATH"}


def find_launcher(name: str, implementation: str) -> str:
    """The `name` launcher of the profile's MPI: the one next to this Python (the venv's MPICH
    wheel), else PATH's. A venv with the mpich extra has an `mpirun` of MPICH's too: the launcher
    is asked what it is (--version) and the other implementation's is passed over."""
    candidates = dict.fromkeys(str(path) for path in (Path(sys.executable).parent / name, shutil.which(name) or "")
                               if str(path) and Path(path).is_file())
    found = {candidate: launcher_implementation(candidate) for candidate in candidates}
    for candidate, what in found.items():
        if what == implementation:
            return candidate
    others = "; found " + ", ".join(f"{IMPLEMENTATION_NAMES.get(what, 'an unknown MPI')}'s at {path}"
                                    for path, what in found.items()) if found else ""
    raise ConfigError(f"hardware.mpi={implementation}: no {IMPLEMENTATION_NAMES[implementation]} {name} here{others}; "
                      f"{INSTALL_ADVICE[implementation]}, or set hardware.mpi to the MPI you have")


def inside_allocation() -> bool:
    """In an salloc shell or a batch script: a Slurm job, but not one of its srun steps."""
    return "SLURM_JOB_ID" in os.environ and "SLURM_STEP_ID" not in os.environ


def check_allocation(run: RunConfig) -> None:
    """The allocation, not the hardware profile, says what this job may use."""
    nodes = int(os.environ.get("SLURM_JOB_NUM_NODES", os.environ.get("SLURM_NNODES", "1")))
    tasks = int(os.environ.get("SLURM_NTASKS", str(run.mode.ranks)))
    if run.mode.nodes > nodes or run.mode.ranks > tasks:
        raise ConfigError(
            f"mode.ranks={run.mode.ranks} on mode.nodes={run.mode.nodes} does not fit Slurm allocation "
            f"{os.environ['SLURM_JOB_ID']} ({nodes} node(s), {tasks} task(s)); "
            f"allocate with -N {run.mode.nodes} -n {run.mode.ranks}"
        )


def srun_cpus_per_task(run: RunConfig) -> Optional[int]:
    """Cores per rank for srun, which (Slurm 22.05 - 23.02) does not take them from the
    allocation: the allocation's inside one, else what the profile derives."""
    if inside_allocation():
        return int(os.environ["SLURM_CPUS_PER_TASK"]) if "SLURM_CPUS_PER_TASK" in os.environ else None
    return derive_request(run).cpus_per_task


def mpi_command(run: RunConfig, program: List[str]) -> List[str]:
    ranks, nodes = str(run.mode.ranks), str(run.mode.nodes)
    hardware = run.hardware
    if hardware.mpi_launcher == "srun" or inside_allocation():
        cpus = srun_cpus_per_task(run)
        return ["srun", *srun_rank_args(run), "--ntasks", ranks, "--nodes", nodes,
                "--ntasks-per-node", str(run.mode.ranks // run.mode.nodes),
                *([f"--cpus-per-task={cpus}"] if cpus else []), *program]
    launcher = find_launcher(hardware.mpi_launcher, hardware.mpi)
    if hardware.mpi == "openmpi":
        # Open MPI's mpirun lets the survivors of a killed rank record their loss before it ends them.
        return [launcher, "-n", ranks, *program]
    # MPICH (and Intel MPI, whose process manager is MPICH's Hydra) kills every rank the moment one
    # dies; left alone, the survivors see the loss in their
    # next collective and say which rank went missing (their collective timeout bounds the wait).
    # Its process manager kills them even so when a rank dies of a signal (SIGKILL, the OOM
    # killer), unless a shell between them turns the signal into an exit status; the shell
    # ignores the SIGUSR1 by which MPICH tells the others of a loss. The program travels as
    # arguments, never as shell text.
    return [launcher, "-disable-auto-cleanup", "-n", ranks, "sh", "-c", 'trap "" USR1; "$0" "$@"; exit $?', *program]


def launcher_implementation(launcher: str) -> Optional[str]:
    """mpich | openmpi | intel, from what the launcher says of itself (None: it would not say)."""
    try:
        result = subprocess.run([launcher, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    said = result.stdout + result.stderr
    if "Intel(R) MPI" in said:
        return "intel"
    if "HYDRA" in said.upper():
        return "mpich"
    return "openmpi" if "Open MPI" in said or "OpenRTE" in said else None


def worker_command(run_dir: Path) -> List[str]:
    return [sys.executable, "-m", "hpcbench.worker", str(run_dir)]


def ranks_failed(run_dir: Path, world_size: int, returncode: int) -> RanksFailed:
    """One line naming the rank and host that failed first, from the records the ranks left."""
    cause = failed_run_cause(run_dir, world_size)
    if cause is None:
        return RanksFailed(f"the {world_size} MPI ranks exited with status {returncode} (see {Path(run_dir) / 'train.log'})")
    error = RanksFailed(f"{cause} (tracebacks: {Path(run_dir) / RANKS_DIR})")
    error.exit_code = min(f.exit_code for f in read_failures(run_dir))
    return error


def launch_ranks(run: RunConfig, out_dir: Path) -> None:
    """Run the DDP ranks under MPI; they read the config from, and write into, `out_dir`."""
    if inside_allocation():
        check_allocation(run)
    else:
        derive_request(run)  # refuses more ranks, cores or GPUs than the hardware profile has
    run_dir = RunDirectory(out_dir)
    run_dir.write_config(run)
    command = mpi_command(run, worker_command(out_dir))
    log.info("starting %d MPI ranks: %s", run.mode.ranks, " ".join(command))
    returncode = subprocess.run(command, check=False).returncode
    if returncode != 0:
        summary = read_summary(out_dir)
        if summary.get("status") == "completed" and not read_failures(out_dir):
            # Every rank got through the last collective and rank 0 wrote the result: what failed
            # is the launcher's own teardown (MPICH's mpiexec, now and then, dies of SIGPIPE
            # writing to a proxy that has already exited).
            log.warning("%s exited with status %d after every rank had finished; the run is complete",
                        command[0], returncode)
            return
        if summary.get("status") in ("interrupted", "diverged"):
            raise RanksStopped(summary.get("error") or summary["status"])
        error = ranks_failed(out_dir, run.mode.ranks, returncode)
        run_dir.mark_failed_if_running(str(error))
        raise error
