"""Stopping cleanly on SIGTERM (Slurm's preemption, `scontrol requeue`, scancel) and SIGINT.

The handler only raises a flag. The trainer folds the flag of every rank into the small
all-reduce it runs every few steps anyway (trainer.SYNC_EVERY_STEPS), so all ranks of a DDP run
stop at the same step even when the signal reached one of them only: no rank is left waiting in a
collective for a peer that has gone. The run ends with `status: interrupted`; the last epoch's
checkpoint is complete on disk (atomic writes), so a requeued or restarted run resumes from it.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

from hpcbench.errors import HpcbenchError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(HpcbenchError):
    """A stop signal arrived; the run can be resumed from its last checkpoint."""

    signal_name = "SIGTERM"  # the signal this rank received (a rank that received none: SIGTERM)


class StopFlag:
    def __init__(self) -> None:
        self.signal_name: Optional[str] = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def stop(self, ranks_signalled: int = 1, world_size: int = 1) -> None:
        """Raise Interrupted (every rank calls this at the same step once any rank saw a signal)."""
        seen = self.signal_name or "a stop signal"
        where = f" ({ranks_signalled} of {world_size} ranks received one)" if world_size > 1 else ""
        interrupted = Interrupted(f"stopped by {seen}{where} at a step boundary; restart to resume from the last epoch")
        interrupted.signal_name = self.signal_name or Interrupted.signal_name
        raise interrupted


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():  # handlers live in the main thread
        yield flag
        return

    def handler(signum, _frame) -> None:
        flag.signal_name = signal.Signals(signum).name

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
