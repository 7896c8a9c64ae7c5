"""torch.distributed over the MPI world: rank 0 opens the TCP store on a port the OS picks and
broadcasts its address over MPI, so no fixed `localhost:29500`: jobs sharing a node and jobs
spanning nodes both work."""
from __future__ import annotations

import datetime
import os
import pickle
import time
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist

from hpcbench.mpi import lost_contact
from hpcbench.mpi.topology import Topology, barrier, bcast, routable_address

# How long the other ranks wait for rank 0 to pass a point where it alone works (writing the
# epoch's metrics and checkpoints): a large model's checkpoint on a busy shared file system takes
# minutes, which no collective timeout should have to allow for. If rank 0 dies meanwhile, its
# store goes with it and the others learn of it at once.
MAIN_RANK_WAIT_S = 3600
# While rank 0 waits for every rank outside a collective, how often it looks whether the ranks it
# waits for still live (lost_contact): a rank killed meanwhile (the OOM killer while it reads its
# data) is named within seconds, not after the wait's hour.
PROBE_EVERY_S = 3
POLL_S = 0.2


class PeerLost(ConnectionError):
    """A rank that others wait for outside any collective is gone."""

_store: Optional[dist.TCPStore] = None  # this process's connection to rank 0's store
_passes: Dict[str, int] = {}  # how often this process passed each point: a store's keys are set once


def nccl_variables() -> Dict[str, str]:
    """NCCL's watchdog, on a collective that timed out or a peer's error, by default aborts the
    process (SIGABRT): no rank record, a summary left `running`. Told to abort the communicator
    only, it makes the rank's next wait raise instead, so the rank records its error like under
    gloo. A value the user set stands."""
    return {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "2"}  # CleanUpOnly


def set_defaults(variables: Dict[str, str]) -> None:
    """Set each variable the environment lacks: what the user exported (a site's module, a job
    script's `export NCCL_SOCKET_IFNAME=...`) stands over the profile's and hpcbench's choices."""
    for name, value in variables.items():
        os.environ.setdefault(name, value)


def init_process_group(topology: Topology, backend: str, timeout_s: int, device: Optional[torch.device] = None,
                       variables: Optional[Dict[str, str]] = None) -> str:
    """Start torch.distributed on the MPI world; returns the store's address (host:port).
    Collectives time out after `timeout_s`, so a dead rank ends the job instead of hanging it
    until the scheduler's time limit. `variables` (the hardware profile's network choice) are
    set before the backend reads them, where the user has not exported them (set_defaults). Under NCCL the group is bound to this rank's GPU
    (`device_id`): its first collective then cannot guess a device from the rank number, which
    picks another rank's GPU under per-task GPU binding or cyclic task placement."""
    global _store
    set_defaults(variables or {})
    if backend == "nccl":
        set_defaults(nccl_variables())
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
    dist.init_process_group(backend, store=store, rank=topology.rank, world_size=topology.world_size, timeout=timeout,
                            device_id=group_device(backend, device))
    _store = store
    return f"{host}:{port}"


def group_device(backend: str, device: Optional[torch.device]) -> Optional[torch.device]:
    """The device a process group is bound to: this rank's GPU under NCCL, none otherwise."""
    return device if backend == "nccl" and device is not None and device.type == "cuda" else None


def _key(point: str) -> str:
    """The store's key for this process's next pass of `point` (every rank passes the same points
    in the same order, so the n-th pass has the same key everywhere, run after run in one group)."""
    _passes[point] = _passes.get(point, 0) + 1
    return f"hpcbench/{point}/{_passes[point]}"


def wait_for_main_rank(topology: Topology, point: str, timeout_s: int = MAIN_RANK_WAIT_S) -> None:
    """The other ranks wait, in rank 0's store rather than in a collective, until rank 0 has
    passed `point` (e.g. the epoch's record)."""
    if not topology.distributed or _store is None:
        return
    key = _key(point)
    if topology.is_main:
        _store.set(key, "1")
    else:
        _store.wait([key], datetime.timedelta(seconds=timeout_s))


def gather_over_store(topology: Topology, point: str, value: Any = None,
                      timeout_s: int = MAIN_RANK_WAIT_S) -> List[Any]:
    """Every rank's `value` (picklable), in rank order, once every rank has passed `point`:
    gathered in rank 0's store rather than in a collective (which times out after
    mode.collective_timeout_s; an MPI one never does), for work whose length differs between
    ranks, such as building the data. Rank 0 looks every PROBE_EVERY_S whether the ranks it waits
    for still live; the others' wait ends at once if rank 0 goes (its store goes with it)."""
    if not topology.distributed or _store is None:
        return [value]
    key = _key(point)
    _store.set(f"{key}/rank{topology.rank}", pickle.dumps(value))
    keys = [f"{key}/rank{rank}" for rank in range(topology.world_size)]
    if topology.is_main:
        _wait_watching(keys, point, timeout_s)
    else:
        _store.wait(keys, datetime.timedelta(seconds=timeout_s))
    return [pickle.loads(data) for data in _store.multi_get(keys)]


def _wait_watching(keys: List[str], point: str, timeout_s: int) -> None:
    """Rank 0 waits for every rank's key, and stops when a rank it waits for is gone. It polls
    (check(), a round trip, every POLL_S): a store wait that times out has c10d log a warning."""
    started, probed, suspects = time.monotonic(), time.monotonic(), set()
    while not _store.check(keys):
        time.sleep(POLL_S)
        if time.monotonic() - started > timeout_s:
            raise dist.DistStoreError(f"not every rank reached {point} in {timeout_s} s")
        if time.monotonic() - probed < PROBE_EVERY_S:
            continue
        probed = time.monotonic()
        waiting = [rank for rank, key in enumerate(keys) if not _store.check([key])]
        unreachable = set(lost_contact.unreachable(waiting))
        lost = sorted(unreachable & suspects)  # twice in a row: not a moment's glitch of the network
        if lost:
            raise PeerLost(f"rank(s) {', '.join(map(str, lost))} went away before {point} (connection refused "
                           f"or no answer on their lost-contact port)")
        suspects = unreachable


def resolve_backend(backend: str, device: str) -> str:
    if backend == "auto":
        return "nccl" if device == "cuda" else "gloo"
    return backend


def all_reduce_sum(tensor: torch.Tensor, topology: Topology) -> torch.Tensor:
    if topology.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shutdown() -> None:
    global _store
    if dist.is_initialized():
        dist.destroy_process_group()
    _store = None
    _passes.clear()
