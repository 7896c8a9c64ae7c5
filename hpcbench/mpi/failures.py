"""What a failing rank of a DDP run does: it writes its record (failure_records.py) and says its
error in one line; rank 0, when its error says a peer is gone, waits for the others' records and
names the rank that failed first. A communication error is a consequence of another rank's loss.
"""
from __future__ import annotations

import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Sequence

from hpcbench.errors import message_line
from hpcbench.failure_records import RankFailure, first_failure, record_path, wait_for_records, write_record
from hpcbench.mpi import lost_contact
from hpcbench.mpi.topology import Topology

# Words of the errors a communication backend raises when another rank (or the link to it) is gone.
_LOST_PEER = ("connection closed by peer", "connection reset by peer", "broken pipe", "timed out", "timeout",
              "socket closed", "nccl communicator was aborted", "remote process exited", "connection refused",
              "ncclremoteerror", "failed to recv", "failed to send", "read error", "write error")
_BACKENDS = ("gloo", "nccl")  # their errors name them (gloo's source path, NCCL's own words)


def one_line(error: BaseException) -> str:
    """The error's type and the last line of its message (errors.message_line)."""
    last = message_line(error)
    return f"{type(error).__name__}: {last}" if last else type(error).__name__


def is_lost_peer(error: BaseException) -> bool:
    """A communication error of the collectives, the store or MPI: a consequence of another rank's
    loss. Only the backends' own errors: a rank's own failure whose words match (a hung file
    system's `TimeoutError`, an `OSError` "read error", a DataLoader's "timed out") is its own."""
    import torch.distributed as dist

    from hpcbench.mpi.process_group import PeerLost

    if isinstance(error, (PeerLost, dist.DistNetworkError, dist.DistStoreError, dist.DistBackendError)):
        return True
    text = f"{error}".lower()
    from_backend = type(error).__module__.startswith("mpi4py") or any(name in text for name in _BACKENDS)
    return isinstance(error, RuntimeError) and from_backend and any(word in text for word in _LOST_PEER)


def record_failure(run_dir: Path, rank: int, host: str, error: BaseException) -> RankFailure:
    """Write this rank's traceback and record; never raises (the run is failing already)."""
    failure = RankFailure(rank, host, time.time(), one_line(error), is_lost_peer(error),
                          getattr(error, "exit_code", 1))
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    with _recording:
        write_record(run_dir, failure, text)
    return failure


def record_on_lost_contact(run_dir: Path, topology: Topology) -> None:
    """Every rank, together: the others, when rank 0 says it lost contact with a rank, record
    themselves as survivors, with where their main thread waits, unless they have recorded an
    error of their own (lost_contact: a survivor waiting on rank 0 would be named missing)."""
    rank, host = topology.rank, topology.host

    def record_waiting() -> None:
        main = sys._current_frames().get(threading.main_thread().ident)
        stack = "".join(traceback.format_stack(main)) if main else ""
        failure = RankFailure(rank, host, time.time(), "waiting when rank 0 lost contact with another rank",
                              lost_peer=True)
        with _recording:
            if not record_path(run_dir, rank).exists():
                write_record(run_dir, failure, f"waiting in:\n{stack}")

    lost_contact.listen(topology, record_waiting)


# The main thread's own error outranks the survivor's record written by record_on_lost_contact.
_recording = threading.Lock()


def failure_line(error: BaseException, run_dir: Path, rank: int, hosts: Sequence[str]) -> str:
    """What a failing rank of a DDP run says: its own error, after leaving its record; rank 0,
    when its error says a peer is gone, names the rank that failed first instead."""
    own = record_failure(run_dir, rank, hosts[rank], error)
    if rank != 0 or not own.lost_peer:
        return f"{own.describe()}: {own.error}"
    lost_contact.tell_the_others()  # a survivor waiting on rank 0 records where it waits
    return first_failure(wait_for_records(run_dir, len(hosts)), hosts) or own.error
