"""Stopping cleanly on SIGTERM (Slurm's preemption, `scontrol requeue`, scancel) and SIGINT.

The handler only raises a flag; the training loop looks at it after every step and stops there,
with `status: interrupted` in summary.json. The last epoch's checkpoint is complete on disk
(atomic writes), so a requeued or restarted run resumes from it exactly.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from hpcbench.errors import HpcbenchError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(HpcbenchError):
    """A stop signal arrived; the run can be resumed from its last checkpoint."""


class StopFlag:
    def __init__(self) -> None:
        self.signal_name: str | None = None

    def check(self) -> None:
        if self.signal_name is not None:
            raise Interrupted(f"stopped by {self.signal_name} at a step boundary; restart to resume from the last epoch")


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
