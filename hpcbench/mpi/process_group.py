"""torch.distributed over the MPI world: rank 0 opens the TCP store on a port the OS picks and
broadcasts its address over MPI, so no fixed `localhost:29500`: jobs sharing a node and jobs
spanning nodes both work."""
from __future__ import annotations

import datetime
import os
import socket
from typing import Optional

import torch
import torch.distributed as dist

from hpcbench.errors import ConfigError
from hpcbench.mpi.topology import Topology, barrier, bcast


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


def init_process_group(topology: Topology, backend: str, timeout_s: int) -> str:
    """Start torch.distributed on the MPI world; returns the store's address (host:port).
    Collectives time out after `timeout_s`, so a dead rank ends the job instead of hanging it
    until the scheduler's time limit."""
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
    # Every rank holds the address before rank 0 leaves MPI for the store: MPI promises progress
    # only inside its calls, and with MPICH's OFI netmod rank 0's part of the broadcast was still
    # unsent when it went on to wait for the others in the store, which waited for the address.
    barrier()
    if store is None:
        store = dist.TCPStore(host, port, topology.world_size, is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=topology.rank, world_size=topology.world_size, timeout=timeout)
    return f"{host}:{port}"


def resolve_backend(backend: str, device: str) -> str:
    if backend == "auto":
        return "nccl" if device == "cuda" else "gloo"
    return backend


def all_reduce_sum(tensor: torch.Tensor, topology: Topology) -> torch.Tensor:
    if topology.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
