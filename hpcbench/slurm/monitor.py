"""Following submitted jobs: a live count, then a report of every failure."""
from __future__ import annotations

import collections
import logging
import time
from typing import Dict, Iterable, List, Optional

from hpcbench.progress import Progress

log = logging.getLogger("hpcbench")

PENDING = {"PENDING", "REQUEUED", "CONFIGURING", "UNKNOWN", "SUBMITTED", "RESIZING", "SUSPENDED"}
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
DONE = {"COMPLETED"}


def category(state: str) -> str:
    state = state.split()[0].upper() if state else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED
    if state in PENDING:
        return "pending"
    if state in RUNNING:
        return "running"
    if state in DONE:
        return "done"
    return "failed"  # FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, PREEMPTED, BOOT_FAIL, DEADLINE


def packed_run_state(allocation_state: str, run_status: Optional[str]) -> str:
    """The state of a run packed with others into one Slurm job (slurm/packing.py): its run
    directory's word once it has one; the allocation's while that waits or runs; FAILED for a
    run that its allocation ended without completing."""
    if run_status in ("completed", "failed"):
        return run_status.upper()
    if category(allocation_state) in ("pending", "running", "failed"):
        return allocation_state
    return "FAILED"


def count_line(states: Iterable[str]) -> str:
    counts = collections.Counter(category(s) for s in states)
    return " | ".join(f"{counts[c]} {c}" for c in ("pending", "running", "done", "failed"))


# A long sweep backs off: past its first minutes, each poll that sees no job change state doubles
# the wait, up to a minute (a day-long sweep of 1,000 jobs asks sacct some 1,500 times, not 17,000).
BACK_OFF_AFTER_S = 120.0
MAX_POLL_S = 60.0


def next_poll_s(current: float, base: float, changed: bool, age_s: float) -> float:
    """The wait before the next poll: `base` while the sweep is young or its jobs change state."""
    if changed or age_s < BACK_OFF_AFTER_S:
        return base
    return min(current * 2, max(base, MAX_POLL_S))


def wait_for(jobs: List, poll_s: float, accounting_lag_s: float = 60.0) -> Dict[str, str]:
    """Poll until every submitit job is done and Slurm's accounting shows it ended (it may lag a
    job's own result file by a few seconds); returns job id -> final Slurm state."""
    progress = Progress("slurm", total=len(jobs), unit="job", log=log)
    watcher = jobs[0].watcher
    all_done_since = None
    started, interval, seen = time.monotonic(), poll_s, None
    while True:
        watcher.update()  # one sacct call for all jobs
        states = {job.job_id: job.state for job in jobs}
        interval = next_poll_s(interval, poll_s, changed=states != seen, age_s=time.monotonic() - started)
        seen = states
        progress.update(sum(category(s) in ("done", "failed") for s in states.values()), count_line(states.values()))
        if all(job.done() for job in jobs):
            all_done_since = all_done_since or time.monotonic()
            ended = all(category(state) in ("done", "failed") for state in states.values())
            if ended or time.monotonic() - all_done_since > accounting_lag_s:
                progress.close()
                return states
        time.sleep(interval)


def stderr_tail(job, lines: int = 15) -> str:
    try:
        text = job.stderr() or ""
    except Exception:  # the log may not exist when a job never started
        text = ""
    return "\n".join(text.strip().splitlines()[-lines:])
