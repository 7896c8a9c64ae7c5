"""Who is who in a run: rank, world size, rank on the node, nodes, from MPI.

MPI starts the processes (mpiexec, mpirun or srun --mpi=...); mpi4py tells each its rank, the
world size and, through a shared-memory split of COMM_WORLD, its rank on its node (right on any
number of nodes). A serial run is rank 0 of 1 and never imports MPI.
"""
from __future__ import annotations

import atexit
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from hpcbench.errors import ConfigError

# Variables a process manager sets for each MPI process (MPICH/Hydra, PMI-2, PMIx, Open MPI).
MPI_RANK_VARIABLES = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "MPI_LOCALRANKID")


@dataclass(frozen=True)
class Topology:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # rank among the processes of this node
    local_size: int = 1  # processes on this node
    nodes: int = 1
    hosts: List[str] = field(default_factory=lambda: [socket.gethostname()])  # host of every rank
    # A DDP run: MPI ranks with a torch.distributed process group, even a world of one (the
    # 1-GPU DDP baseline of a scaling study runs DDP's code path, all-reduce included).
    distributed: bool = False
    store_address: str = ""  # host:port of rank 0's torch.distributed store

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def host(self) -> str:
        return self.hosts[self.rank]


SERIAL = Topology()


def routable_address(nodes: int) -> str:
    """An address the other ranks can reach rank 0 at: HPCBENCH_MASTER_ADDR when that is set,
    else this_host_address."""
    if "HPCBENCH_MASTER_ADDR" in os.environ:
        return os.environ["HPCBENCH_MASTER_ADDR"]
    return this_host_address(nodes)


def this_host_address(nodes: int) -> str:
    """An address the other ranks can reach this one at. One node: loopback. Several nodes: this
    host's address as the resolver gives it."""
    if nodes == 1:
        return "127.0.0.1"
    for *_, sockaddr in socket.getaddrinfo(socket.getfqdn(), None, socket.AF_INET):
        if not sockaddr[0].startswith("127."):
            return sockaddr[0]
    raise ConfigError(
        f"{socket.getfqdn()} resolves only to loopback; set HPCBENCH_MASTER_ADDR to an address of rank 0's node"
    )


# MPI's own GPU support, off unless the user set it: a CUDA-aware MPI may create a context on every
# GPU of the node in MPI_Init, which fails on GPUs in exclusive-process mode and takes memory on
# the others' GPUs, and hpcbench never hands MPI a GPU buffer. MPICH; Open MPI 4 (opal_cuda_support)
# and 5 (its accelerator framework).
MPI_GPU_SUPPORT_OFF = {"MPIR_CVAR_ENABLE_GPU": "0", "OMPI_MCA_opal_cuda_support": "0", "OMPI_MCA_accelerator": "null"}

# mpi4py's wheel carries its extension for MPICH's ABI (libmpi.so.12: MPICH, Intel MPI, Cray MPICH)
# and for Open MPI's (libmpi.so.40), and loads the first libmpi it finds: the venv's MPICH (the
# mpich extra) before the system's. Open MPI's ranks must load Open MPI's.
OPEN_MPI_LIBRARY = "libmpi.so.40"
IMPLEMENTATION_NAMES = {"mpich": "MPICH", "openmpi": "Open MPI", "intel": "Intel MPI"}


def started_by_open_mpi() -> bool:
    """Open MPI's mpirun sets OMPI_COMM_WORLD_SIZE in every rank; srun starts Open MPI's ranks
    with its PMIx plugin (MPICH's use PMI-2), and says so in SLURM_MPI_TYPE."""
    return "OMPI_COMM_WORLD_SIZE" in os.environ or os.environ.get("SLURM_MPI_TYPE", "").startswith("pmix")


def started_by_intel_mpi() -> bool:
    """Intel MPI's process manager (a Hydra of its own) sets I_MPI_HYDRA_UUID in every rank."""
    return "I_MPI_HYDRA_UUID" in os.environ


def _parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def intel_mpi_library() -> Optional[str]:
    """Intel MPI's libmpi.so.12, which has the name of the venv's MPICH's, so found by path: the
    one beside the process manager that started this rank (its hydra_pmi_proxy in a module's or
    pip's impi-rt bin/, the library in ../lib), else under I_MPI_ROOT."""
    candidates = []
    pid = os.getpid()
    try:
        for _ in range(4):  # the rank's parent, or the parent of launch.py's shell
            pid = _parent_pid(pid)
            executable = Path(os.readlink(f"/proc/{pid}/exe"))
            if executable.name == "hydra_pmi_proxy":
                candidates.append(executable.parent.parent / "lib" / "libmpi.so.12")
                break
    except (OSError, ValueError, IndexError):
        pass
    if os.environ.get("I_MPI_ROOT"):
        root = Path(os.environ["I_MPI_ROOT"])
        candidates += [root / "lib" / "libmpi.so.12", root / "lib" / "release" / "libmpi.so.12"]
    return next((str(path) for path in candidates if path.is_file()), None)


def choose_mpi_library() -> None:
    """Before mpi4py starts MPI: a rank Open MPI started loads Open MPI's library, a rank Intel MPI
    started loads Intel's. The user's own MPI4PY_LIBMPI or MPI4PY_MPIABI stands."""
    if "MPI4PY_LIBMPI" in os.environ or "MPI4PY_MPIABI" in os.environ:
        return
    if started_by_open_mpi():
        os.environ["MPI4PY_LIBMPI"] = OPEN_MPI_LIBRARY
    elif started_by_intel_mpi() and (library := intel_mpi_library()):
        os.environ["MPI4PY_LIBMPI"] = library


def library_name(version: str) -> str:
    """"MPICH 5.0.2", "Open MPI v4.1.4", "Intel(R) MPI Library 2021.10": MPI_Get_library_version's
    text up to the version number."""
    first = " ".join(version.replace("Version:", "").strip().splitlines()[0].split()) if version.strip() else "an unknown MPI"
    found = re.match(r".*?\d+(\.\d+)+", first)
    return found.group(0) if found else first[:40]


def library_implementation(version: str) -> str:
    """mpich | openmpi | intel, from MPI_Get_library_version's text."""
    if "Open MPI" in version:
        return "openmpi"
    return "intel" if "Intel" in version else "mpich"


def check_implementation(expected: str) -> None:
    """The ranks run the MPI the hardware profile names (the launcher's arguments and srun's
    plugin were chosen by it)."""
    version = init_mpi().Get_library_version()
    found = library_implementation(version)
    if found != expected:
        raise ConfigError(f"hardware.mpi={expected}, but the ranks run {library_name(version)}: "
                          f"set hardware.mpi={found}, or start the ranks with {IMPLEMENTATION_NAMES[expected]}'s launcher")


# How long MPI may take to start before the process gives up with one line naming its host (a rank
# that hangs in MPI_Init is otherwise bounded only by the job's time limit). MPI starts before the
# config is read, so the bound is an environment variable.
MPI_START_TIMEOUT_ENV = "HPCBENCH_MPI_START_TIMEOUT_S"
MPI_START_TIMEOUT_S = 300


def init_mpi():
    """mpi4py's MPI module; importing it starts MPI. hpcbench's ranks use MPI only to find each
    other (ranks, hosts, rank 0's store address): gloo or NCCL carry the gradients. So MPI's GPU
    support is turned off (MPI_GPU_SUPPORT_OFF), and MPICH is asked for its OFI netmod, unless the
    user chose one (MPIR_CVAR_CH4_NETMOD): with its default, UCX, every node's first rank puts a 4 KB
    address into the PMI key-value space at start-up in 1 KB pieces, and Slurm's pmi2 plugin reads
    each PMI-1 command with a single 1024-byte read(), so a piece that encodes to more than that is
    cut in two and every rank of the job waits in MPI_Init until the time limit (seen on the test
    cluster). OFI's TCP address is 16 bytes. Other MPI libraries ignore the variables."""
    if "mpi4py.MPI" in sys.modules:
        return sys.modules["mpi4py.MPI"]
    choose_mpi_library()
    os.environ.setdefault("MPIR_CVAR_CH4_NETMOD", "ofi")
    for name, value in MPI_GPU_SUPPORT_OFF.items():
        os.environ.setdefault(name, value)
    watchdog = _start_watchdog(float(os.environ.get(MPI_START_TIMEOUT_ENV, MPI_START_TIMEOUT_S)))
    try:
        from mpi4py import MPI
    finally:
        watchdog.stdin.close()  # MPI started (or failed at once): the watchdog leaves quietly
        watchdog.wait()
    return MPI


# The watchdog is a process of its own: mpi4py starts MPI on import while holding the GIL, so no
# thread of this process could speak while MPI_Init hangs. It waits for its stdin to close, which
# this process does once MPI has started (or the system does when it dies).
_WATCHDOG = """
import os, select, signal, sys, time
pid, timeout_s, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
if not select.select([sys.stdin], [], [], timeout_s)[0]:
    sys.stderr.write(message + "\\n")
    sys.stderr.flush()
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):  # then SIGKILL, if SIGTERM has not ended it within 5 s
            time.sleep(0.1)
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rpartition(")")[2].split()[0] == "Z":
                    break
        else:
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, FileNotFoundError):
        pass
"""


def _start_watchdog(timeout_s: float) -> subprocess.Popen:
    rank = next((os.environ[name] for name in MPI_RANK_VARIABLES if name in os.environ), "?")
    message = (f"hpcbench: MPI did not start on {socket.gethostname()} (rank {rank}) within {timeout_s:g} s; check "
               f"the launcher's MPI plugin (srun --mpi=...) and MPI module, or raise {MPI_START_TIMEOUT_ENV}")
    return subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(timeout_s), message],
                            stdin=subprocess.PIPE, close_fds=True)


def launched_by_mpi() -> bool:
    return any(name in os.environ for name in MPI_RANK_VARIABLES)


def slurm_step_tasks() -> int:
    """Tasks of the srun step this process is one of (1 outside a step: a batch script or an
    salloc shell have SLURM_NTASKS for the whole allocation, but are not one of its tasks)."""
    if "SLURM_STEP_ID" not in os.environ:  # set by srun for its tasks only
        return 1
    return int(os.environ.get("SLURM_STEP_NUM_TASKS", os.environ.get("SLURM_NTASKS", "1")))


def mpi_topology(expected_world_size: int) -> Topology:
    """Rank, world and node layout from MPI; refuses worlds that do not match the config."""
    MPI = init_mpi()

    # MPICH's mpiexec, told not to kill the other ranks when one dies (mpi/launch.py), tells them
    # of the loss with SIGUSR1; MPI's own handler, installed at initialisation, would end them
    # before they can say which rank was lost. Their next collective tells them instead.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    world = MPI.COMM_WORLD
    size, rank = world.Get_size(), world.Get_rank()
    if size == 1 and slurm_step_tasks() > 1 and expected_world_size > 1:
        raise ConfigError(
            f"this is one of {slurm_step_tasks()} separate MPI worlds of size 1: srun started the tasks "
            f"without an MPI plugin; use srun --mpi=pmi2 (MPICH) or --mpi=pmix (Open MPI)"
        )
    if size != expected_world_size:
        raise ConfigError(
            f"MPI started {size} processes but mode.ranks={expected_world_size}; "
            f"launch with -n {expected_world_size} or set mode.ranks={size}"
        )
    node = world.Split_type(MPI.COMM_TYPE_SHARED)
    local_rank, local_size = node.Get_rank(), node.Get_size()
    nodes = world.allreduce(1 if local_rank == 0 else 0)
    node.Free()
    hosts = world.allgather(socket.gethostname())
    return Topology(rank, size, local_rank, local_size, nodes, hosts, distributed=True)


def exit_without_mpi_finalize(exit_code: int) -> None:
    """Make this process skip MPI_Finalize when it exits: finalizing waits for every rank, and
    after a rank is gone it would wait forever. (Python's atexit handlers run before mpi4py's
    finalization.)"""

    def leave() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)

    atexit.register(leave)


def bcast(value, root: int = 0):
    return init_mpi().COMM_WORLD.bcast(value, root=root)


def allgather(value) -> list:
    return init_mpi().COMM_WORLD.allgather(value)


def barrier() -> None:
    init_mpi().COMM_WORLD.Barrier()


def threads_per_rank(topology: Topology, cpus_per_rank: Optional[int] = None) -> int:
    """CPU ranks share their node's cores: mode.cpus_per_rank when set, else Slurm's
    cpus-per-task, else OMP_NUM_THREADS (the environment's word, as torch takes it), else an equal
    share of the cores this process may use. Slurm's comes before OMP_NUM_THREADS: a login shell's
    OMP_NUM_THREADS=1, exported into a job of 8 cores a task, would leave 7 of them idle."""
    if cpus_per_rank is not None:
        return cpus_per_rank
    for variable in ("SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS"):
        if os.environ.get(variable, "").isdigit():
            return max(1, int(os.environ[variable]))
    return max(1, len(os.sched_getaffinity(0)) // topology.local_size)
