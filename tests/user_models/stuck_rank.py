"""small_dropout's CNN whose training goes wrong at step `at_step`: rank 0 fails with an error of its
own while rank 1 blocks outside any collective, as a read from a hung file system would (a sleep
that goes on after every signal handler, where a read in the kernel would not even wake)."""
from __future__ import annotations

import time

import torch
import torch.distributed as dist
from small_dropout import build as build_small
from torch import nn


class StuckRank(nn.Module):
    def __init__(self, network: nn.Module, at_step: int):
        super().__init__()
        self.network, self.at_step, self.steps = network, at_step, 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.steps += 1
            if self.steps == self.at_step and dist.get_rank() == 0:
                raise RuntimeError("rank 0's own error")
            while self.steps == self.at_step:
                time.sleep(3600)
        return self.network(images)


def build(num_classes: int, at_step: int = 3) -> nn.Module:
    return StuckRank(build_small(num_classes), at_step)
