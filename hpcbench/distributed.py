"""Process topology and the MPI bootstrap of torch.distributed.

MPI starts the processes (mpiexec, mpirun or srun --mpi=...); mpi4py tells each its rank, the
world size and, through a shared-memory split of COMM_WORLD, its rank on its node. Rank 0 then
opens the torch.distributed TCP store on a port the OS picks and broadcasts address and port over
MPI: no fixed `localhost:29500`, so jobs sharing a node and jobs spanning nodes both work.
"""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

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

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SERIAL = Topology()


def launched_by_mpi() -> bool:
    return any(name in os.environ for name in MPI_RANK_VARIABLES)


def slurm_step_tasks() -> int:
    return int(os.environ.get("SLURM_STEP_NUM_TASKS", os.environ.get("SLURM_NTASKS", "1")))


def mpi_topology(expected_world_size: int) -> Topology:
    """Rank, world and node layout from MPI; refuses worlds that do not match the config."""
    from mpi4py import MPI

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
    return Topology(rank, size, local_rank, local_size, nodes)


def bcast(value, root: int = 0):
    from mpi4py import MPI

    return MPI.COMM_WORLD.bcast(value, root=root)


def routable_address(nodes: int) -> str:
    """An address the other ranks can reach rank 0 at. One node: loopback. Several nodes: this
    host's address as the resolver gives it, or HPCBENCH_MASTER_ADDR when that is set."""
    if "HPCBENCH_MASTER_ADDR" in os.environ:
        return os.environ["HPCBENCH_MASTER_ADDR"]
    if nodes == 1:
        return "127.0.0.1"
    for *_, sockaddr in socket.getaddrinfo(socket.getfqdn(), None, socket.AF_INET):
        if not sockaddr[0].startswith("127."):
            return sockaddr[0]
    raise ConfigError(
        f"{socket.getfqdn()} resolves only to loopback; set HPCBENCH_MASTER_ADDR to an address of rank 0's node"
    )


def init_process_group(topology: Topology, backend: str, timeout_s: int) -> None:
    """Start torch.distributed on the MPI world. Collectives time out after `timeout_s`, so a
    dead rank ends the job instead of hanging it until the scheduler's time limit."""
    timeout = datetime.timedelta(seconds=timeout_s)
    store: Optional[dist.TCPStore] = None
    if topology.is_main:
        host = routable_address(topology.nodes)
        # port=0: the OS picks a free port while the store binds it, so no other job can take it.
        store = dist.TCPStore(host, 0, topology.world_size, is_master=True, timeout=timeout, wait_for_workers=False)
        address = (host, store.port)
    else:
        address = None
    host, port = bcast(address)
    if store is None:
        store = dist.TCPStore(host, port, topology.world_size, is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=topology.rank, world_size=topology.world_size, timeout=timeout)


def resolve_backend(backend: str, device: str) -> str:
    if backend == "auto":
        return "nccl" if device == "cuda" else "gloo"
    return backend


def threads_per_rank(topology: Topology, cpus_per_rank: Optional[int] = None) -> int:
    """CPU ranks share their node's cores: mode.cpus_per_rank when set, else Slurm's
    cpus-per-task, else an equal share of the cores this process may use."""
    if cpus_per_rank is not None:
        return cpus_per_rank
    if "SLURM_CPUS_PER_TASK" in os.environ:
        return max(1, int(os.environ["SLURM_CPUS_PER_TASK"]))
    return max(1, len(os.sched_getaffinity(0)) // topology.local_size)


def all_reduce_sum(tensor: torch.Tensor, topology: Topology) -> torch.Tensor:
    if topology.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
