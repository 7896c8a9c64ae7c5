"""small_dropout's CNN with training steps that take `step_s` seconds of wall time and next to no
CPU: runs long enough to be stopped in the middle of an epoch, cheap enough that a 2-core machine
runs 24 of them side by side (tests/test_slurm_packing.py)."""
from __future__ import annotations

import time

import torch
from small_dropout import build as build_small
from torch import nn


class SlowSteps(nn.Module):
    def __init__(self, network: nn.Module, step_s: float):
        super().__init__()
        self.network, self.step_s = network, step_s

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.training:
            time.sleep(self.step_s)
        return self.network(images)


def build(num_classes: int, step_s: float = 0.5) -> nn.Module:
    return SlowSteps(build_small(num_classes), step_s)
