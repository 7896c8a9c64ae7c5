"""small_dropout's CNN with training steps that take `step_s` seconds of wall time and next to no
CPU: runs long enough to be stopped in the middle of an epoch, cheap enough that a 2-core machine
runs 24 of them side by side (tests/test_slurm_packing.py).

With `gate` (a file path), the training step after the first `gate_after_steps` waits until that
file exists or the run receives a stop signal: a test that requeues a run in its second epoch
then finds it there however busy the machine is (a 2 s window raced the requeue under load)."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import torch
from small_dropout import build as build_small
from torch import nn


class SlowSteps(nn.Module):
    def __init__(self, network: nn.Module, step_s: float, gate: str, gate_after_steps: int):
        super().__init__()
        self.network, self.step_s = network, step_s
        self.gate, self.gate_after_steps, self.steps, self.stopping = gate, gate_after_steps, 0, False

    def _note_stop_signal(self) -> None:
        """Chain a handler before the run's own (installed by then): the gate opens on a stop signal."""
        previous = signal.getsignal(signal.SIGTERM)

        def note(number, frame):
            self.stopping = True
            if callable(previous):
                previous(number, frame)

        signal.signal(signal.SIGTERM, note)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.steps += 1
            if self.gate and self.steps == 1:
                self._note_stop_signal()
            if self.gate and self.steps == self.gate_after_steps + 1:
                while not (self.stopping or Path(self.gate).exists()):
                    time.sleep(0.05)
            time.sleep(self.step_s)
        return self.network(images)


def build(num_classes: int, step_s: float = 0.5, gate: str = "", gate_after_steps: int = 0) -> nn.Module:
    return SlowSteps(build_small(num_classes), step_s, gate, gate_after_steps)
