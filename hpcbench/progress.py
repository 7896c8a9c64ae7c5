"""Progress for people: a tqdm bar on a terminal; in a log file (Slurm's .out/.err, CI) nothing
between the lines the caller logs itself, or one line whenever the status text changes.

Used by the training loop (a bar per epoch, host-side counters only: reading the loss would force
a device sync every step) and by the Slurm launcher's live job count.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Optional

from tqdm import tqdm


class Progress:
    def __init__(self, label: str, total: Optional[int] = None, enabled: bool = True, unit: str = "it",
                 unit_scale: float = 1, log: Optional[logging.Logger] = None, repeat_s: float = 30.0):
        """`log`: where a changed status goes when stderr is not a terminal (None: stay quiet);
        an unchanged status is repeated every `repeat_s` so a log shows the wait goes on."""
        self.label, self.log, self.repeat_s = label, log, repeat_s
        self.last_status, self.last_logged = "", 0.0
        self.bar = None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(total=total, desc=label, unit=unit, unit_scale=unit_scale, leave=False, file=sys.stderr,
                            mininterval=0.2, dynamic_ncols=True)

    def update(self, done: Optional[int] = None, status: str = "") -> None:
        if self.bar is not None:
            if done is not None:
                self.bar.n = done
            if status:
                self.bar.set_postfix_str(status, refresh=False)
            self.bar.refresh() if done is None else self.bar.update(0)
        elif self.log is not None and status and (
                status != self.last_status or time.monotonic() - self.last_logged > self.repeat_s):
            self.log.info("%s: %s", self.label, status)
            self.last_logged = time.monotonic()
        self.last_status = status or self.last_status

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
