"""The failure records of a DDP run's ranks, in its run directory, and which rank failed first.

When one rank of a DDP run fails, the others fail too, in their next collective ("Connection
closed by peer", a timeout): their errors are consequences. Every failing rank writes its
traceback to `ranks/rank<N>.log` and a one-line record to `ranks/rank<N>.json` in the run
directory (the only files a rank other than 0 writes there; mpi/failures.py writes them). From
the records, rank 0, the process that launched the ranks (mpi/launch.py) or the Slurm launcher
names the cause in one line: the rank and host whose own error came first, or the rank that left
no record at all (killed, or its host or link lost).
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from hpcbench.files import atomic_write_json, atomic_write_text
from hpcbench.rundir import ENV

RANKS_DIR = "ranks"
# How long rank 0 waits for the records of the others once its own error says a peer is gone.
RECORD_GRACE_S = 5.0


@dataclass
class RankFailure:
    rank: int
    host: str
    time: float  # seconds since the epoch, when the error reached the rank's top level
    error: str  # one line: type and message
    lost_peer: bool  # a communication error: a consequence of another rank's failure
    exit_code: int = 1  # 2 for a configuration error (every rank raises the same)

    def describe(self) -> str:
        return f"rank {self.rank} on {self.host}"


def record_path(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / RANKS_DIR / f"rank{rank}.json"


def write_record(run_dir: Path, failure: RankFailure, log_text: str) -> None:
    path = record_path(run_dir, failure.rank)
    try:
        atomic_write_text(path.with_suffix(".log"), f"{failure.describe()}\n{log_text}")
        atomic_write_json(path, asdict(failure))
    except OSError:  # never raises: the run is failing already
        pass


def clear_failures(run_dir: Path) -> None:
    """Remove the records of an earlier attempt of this run (a requeued or restarted job)."""
    shutil.rmtree(Path(run_dir) / RANKS_DIR, ignore_errors=True)


def read_failures(run_dir: Path) -> List[RankFailure]:
    failures = []
    for path in sorted((Path(run_dir) / RANKS_DIR).glob("rank*.json")):
        try:
            failures.append(RankFailure(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return failures


def wait_for_records(run_dir: Path, world_size: int, grace_s: float = RECORD_GRACE_S) -> List[RankFailure]:
    """The records of the failed ranks, waiting up to `grace_s` for every rank to write one."""
    deadline = time.monotonic() + grace_s
    while True:
        failures = read_failures(run_dir)
        if len(failures) >= world_size or time.monotonic() > deadline:
            return failures
        time.sleep(0.2)


def first_failure(failures: Sequence[RankFailure], hosts: Sequence[str]) -> Optional[str]:
    """One line naming the cause: the error every rank had (a bad configuration), else the
    earliest rank with an error of its own, else the ranks that left no record, else the earliest
    record. None when there is nothing to say."""
    if len(failures) == len(hosts) and len({f.error for f in failures}) == 1 and not failures[0].lost_peer:
        return failures[0].error.partition(": ")[2] or failures[0].error
    own = sorted((f for f in failures if not f.lost_peer), key=lambda f: f.time)
    if own:
        return f"{own[0].describe()} failed first: {own[0].error}"
    recorded = {f.rank for f in failures}
    missing = [rank for rank in range(len(hosts)) if rank not in recorded]
    if failures and missing:
        names = ", ".join(f"rank {rank} on {hosts[rank]}" for rank in missing)
        return f"{names} went missing (killed, or its host or link lost); the others lost contact with it"
    if failures:
        earliest = min(failures, key=lambda f: f.time)
        return f"{earliest.describe()} failed first: {earliest.error}"
    return None


def rank_hosts(run_dir: Path, world_size: int) -> List[str]:
    """Every rank's host as rank 0 recorded it in env.json (unknown before it did)."""
    try:
        hosts = json.loads((Path(run_dir) / ENV).read_text()).get("rank_hosts") or []
    except (OSError, ValueError):
        hosts = []
    return hosts if len(hosts) == world_size else ["an unknown host"] * world_size


def failed_run_cause(run_dir: Path, world_size: int) -> Optional[str]:
    """What the launchers say about a failed DDP run, from the records its ranks left (None: none
    left one; they were killed: by NCCL's watchdog, the OOM killer, a signal)."""
    return first_failure(read_failures(run_dir), rank_hosts(run_dir, world_size))
