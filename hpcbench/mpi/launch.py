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
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from hpcbench.config import RunConfig, collective_timeout
from hpcbench.errors import ConfigError, HpcbenchError
from hpcbench.failure_records import RANKS_DIR, failed_run_cause, rank_hosts, read_failures
from hpcbench.mpi.topology import IMPLEMENTATION_NAMES
from hpcbench.rundir import RunDirectory, read_summary
from hpcbench.slurm.resources import derive_request, srun_rank_args

log = logging.getLogger("hpcbench")

# A rank stuck outside any collective (a read from a hung file system) never learns that its peers
# failed, and mpiexec -disable-auto-cleanup waits for it forever. Once a rank has recorded a
# failure, the others get the collective timeout and this long to record theirs and exit; then
# the launcher ends them (under srun, its --wait does the same: slurm/resources.py).
STUCK_RANK_GRACE_S = 10
# Ending the ranks: Open MPI's mpirun ends them on the first SIGINT; MPICH's and Intel's Hydra
# forward it (the ranks' stop signal) and end them, with SIGKILL, on the second.
END_SIGNAL_INTERVAL_S = 2.0
# A launcher that could not start the ranks says so on its stderr and nowhere else (the ranks,
# never started, leave no record): its stderr passes through this process, its end kept.
STDERR_TAIL_BYTES = 64 * 1024
LAUNCHER_ERROR = re.compile(r"^(srun: error: .*|\[mpiexec@[^]]*\] .*|mpirun (was unable|could not|noticed) .*)$", re.M)


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


def ranks_failed(run_dir: Path, world_size: int, launcher: LauncherExit) -> RanksFailed:
    """One line naming the rank and host that failed first, from the records the ranks left, and
    the ranks the launcher had to end; else the launcher's own first error line (srun: "task 2
    launch failed: ...")."""
    cause = failed_run_cause(run_dir, world_size)
    if cause is None:
        said = LAUNCHER_ERROR.search(launcher.stderr_tail.replace("\r", "\n"))  # after a progress bar's last update
        return RanksFailed(f"the {world_size} MPI ranks exited with status {launcher.status}"
                           f"{f'; {said.group(0).strip()}' if said else ''} (see {Path(run_dir) / 'train.log'})")
    ended = f"; {launcher.ended}" if launcher.ended else ""
    error = RanksFailed(f"{cause} (tracebacks: {Path(run_dir) / RANKS_DIR}){ended}")
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
    launcher = run_ranks(command, out_dir, run.mode.ranks, collective_timeout(run) + STUCK_RANK_GRACE_S)
    # A rank's failure record fails the run whatever the launcher's status: MPICH's mpiexec, its
    # ranks ended by a second SIGINT, now and then exits 0 (its proxy asserts on a closed socket).
    if launcher.status != 0 or read_failures(out_dir):
        summary = read_summary(out_dir)
        if summary.get("status") == "completed" and not read_failures(out_dir):
            # Every rank got through the last collective and rank 0 wrote the result: what failed
            # is the launcher's own teardown (MPICH's mpiexec, now and then, dies of SIGPIPE
            # writing to a proxy that has already exited).
            log.warning("%s exited with status %d after every rank had finished; the run is complete",
                        command[0], launcher.status)
            return
        if summary.get("status") in ("interrupted", "diverged"):
            raise RanksStopped(summary.get("error") or summary["status"])
        error = ranks_failed(out_dir, run.mode.ranks, launcher)
        run_dir.mark_failed_if_running(str(error))
        raise error


@dataclass
class LauncherExit:
    status: int
    ended: str  # the ranks the launcher had to end, stuck outside any collective ("": none)
    stderr_tail: str  # the end of the launcher's stderr (STDERR_TAIL_BYTES)


def run_ranks(command: List[str], run_dir: Path, world_size: int, grace_s: float) -> LauncherExit:
    """Run the MPI launcher until it exits, ending the ranks still running `grace_s` after the
    first failure record (STUCK_RANK_GRACE_S); its stderr passes through."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE)
    stderr = _PassThrough(process.stderr)
    try:
        failed_at: Optional[float] = None
        stuck = ""
        while True:
            try:
                status = process.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                pass
            if failed_at is None and read_failures(run_dir):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > grace_s:
                stuck = _stuck_ranks(run_dir, world_size, grace_s)
                status = _end(process)
                break
    except KeyboardInterrupt:
        # Ctrl-C reached the launcher too (one foreground process group): its ranks stop at their
        # next step boundary (a second Ctrl-C makes MPICH's end them at once).
        process.wait()
        raise
    return LauncherExit(status, stuck, stderr.tail())


class _PassThrough:
    """A child's stderr copied to this process's as it comes (progress bars' carriage returns
    too), its last STDERR_TAIL_BYTES kept."""

    def __init__(self, stream):
        self._stream, self._kept = stream, bytearray()
        self._thread = threading.Thread(target=self._copy, daemon=True)
        self._thread.start()

    def _copy(self) -> None:
        out = getattr(sys.stderr, "buffer", None)
        while chunk := os.read(self._stream.fileno(), 65536):
            if out is not None:
                out.write(chunk)
                out.flush()
            else:
                sys.stderr.write(chunk.decode(errors="replace"))
            self._kept = (self._kept + chunk)[-STDERR_TAIL_BYTES:]

    def tail(self) -> str:
        """What was kept, once the child's stderr is closed (a rank the launcher left behind
        may hold it open: then what came so far)."""
        self._thread.join(timeout=5)
        return bytes(self._kept).decode(errors="replace")


def _stuck_ranks(run_dir: Path, world_size: int, grace_s: float) -> str:
    recorded = {failure.rank for failure in read_failures(run_dir)}
    hosts = rank_hosts(run_dir, world_size)
    stuck = [f"rank {rank} on {hosts[rank]}" for rank in range(world_size) if rank not in recorded]
    if not stuck:
        return ""
    said = f"{', '.join(stuck)} still ran {grace_s:.0f} s later, outside any collective (a hung file system?)"
    log.warning("%s: ending it", said)
    return f"{said}, and {'was' if len(stuck) == 1 else 'were'} ended"


def _end(process: subprocess.Popen) -> int:
    """End the launcher's ranks the launcher's own way (END_SIGNAL_INTERVAL_S): SIGINT, SIGINT
    again, then SIGKILL to the launcher itself."""
    for _ in range(2):
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout=END_SIGNAL_INTERVAL_S)
        except subprocess.TimeoutExpired:
            continue
    try:
        return process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
