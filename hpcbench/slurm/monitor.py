"""Following submitted jobs: a live count, then a report of every failure."""
from __future__ import annotations

import collections
import logging
import time
from typing import Dict, Iterable, List

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


def count_line(states: Iterable[str]) -> str:
    counts = collections.Counter(category(s) for s in states)
    return " | ".join(f"{counts[c]} {c}" for c in ("pending", "running", "done", "failed"))


def wait_for(jobs: List, poll_s: float, accounting_lag_s: float = 60.0) -> Dict[str, str]:
    """Poll until every submitit job is done and Slurm's accounting shows it ended (it may lag a
    job's own result file by a few seconds); returns job id -> final Slurm state."""
    progress = Progress("slurm", total=len(jobs), unit="job", log=log)
    watcher = jobs[0].watcher
    all_done_since = None
    while True:
        watcher.update()  # one sacct call for all jobs
        states = {job.job_id: job.state for job in jobs}
        progress.update(sum(category(s) in ("done", "failed") for s in states.values()), count_line(states.values()))
        if all(job.done() for job in jobs):
            all_done_since = all_done_since or time.monotonic()
            ended = all(category(state) in ("done", "failed") for state in states.values())
            if ended or time.monotonic() - all_done_since > accounting_lag_s:
                progress.close()
                return states
        time.sleep(poll_s)


def stderr_tail(job, lines: int = 15) -> str:
    try:
        text = job.stderr() or ""
    except Exception:  # the log may not exist when a job never started
        text = ""
    return "\n".join(text.strip().splitlines()[-lines:])
