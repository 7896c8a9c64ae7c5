"""Per-epoch progress: an updating bar on a terminal, nothing in between epochs otherwise
(Slurm logs get the one line per epoch the trainer logs)."""
from __future__ import annotations

import sys
import time


class ProgressBar:
    def __init__(self, total: int, label: str, enabled: bool, batch_images: int):
        self.total, self.label, self.batch_images = total, label, batch_images
        self.enabled = enabled and sys.stderr.isatty()
        self.start = time.perf_counter()
        self.last_draw = 0.0

    def update(self, step: int) -> None:
        """Redraw at most 5 times a second. Shows only host-side counters: reading the loss here
        would force a device sync every step."""
        now = time.perf_counter()
        if not self.enabled or (now - self.last_draw < 0.2 and step < self.total):
            return
        self.last_draw = now
        width = 30
        filled = int(width * step / max(1, self.total))
        rate = step * self.batch_images / max(now - self.start, 1e-9)
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {step}/{self.total} {rate:7.1f} img/s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
