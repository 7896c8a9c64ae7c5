"""Who is who in a run: rank, world size, rank on the node, nodes, from MPI.

MPI starts the processes (mpiexec, mpirun or srun --mpi=...); mpi4py tells each its rank, the
world size and, through a shared-memory split of COMM_WORLD, its rank on its node (right on any
number of nodes). A serial run is rank 0 of 1 and never imports MPI.
"""
from __future__ import annotations

import atexit
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass, field
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


SERIAL = Topology()


def init_mpi():
    """mpi4py's MPI module; importing it starts MPI. hpcbench's ranks use MPI only to find each
    other (ranks, hosts, rank 0's store address): gloo or NCCL carry the gradients. So MPICH is
    asked for its OFI netmod, unless the user chose one (MPIR_CVAR_CH4_NETMOD): with its default,
    UCX, every node's first rank puts a 4 KB address into the PMI key-value space at start-up in
    1 KB pieces, and Slurm's pmi2 plugin reads each PMI-1 command with a single 1024-byte read(),
    so a piece that encodes to more than that is cut in two and every rank of the job waits in
    MPI_Init until the time limit (seen on the test cluster). OFI's TCP address is 16 bytes.
    Other MPI libraries ignore the variable."""
    os.environ.setdefault("MPIR_CVAR_CH4_NETMOD", "ofi")
    from mpi4py import MPI

    return MPI


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


def barrier() -> None:
    init_mpi().COMM_WORLD.Barrier()


def threads_per_rank(topology: Topology, cpus_per_rank: Optional[int] = None) -> int:
    """CPU ranks share their node's cores: mode.cpus_per_rank when set, else Slurm's
    cpus-per-task, else an equal share of the cores this process may use."""
    if cpus_per_rank is not None:
        return cpus_per_rank
    if "SLURM_CPUS_PER_TASK" in os.environ:
        return max(1, int(os.environ["SLURM_CPUS_PER_TASK"]))
    return max(1, len(os.sched_getaffinity(0)) // topology.local_size)
