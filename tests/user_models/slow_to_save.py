"""A model whose first checkpoint takes `delay_s` to write on rank 0, as a large model's does on a
busy shared file system (only rank 0 takes its state_dict: it alone writes the run directory)."""
from __future__ import annotations

import time

from torch import nn


class SlowToSave(nn.Sequential):
    def __init__(self, delay_s: float, *layers: nn.Module):
        super().__init__(*layers)
        self.delay_s = delay_s

    def state_dict(self, *args, **kwargs):
        time.sleep(self.delay_s)
        self.delay_s = 0.0  # only the first checkpoint is slow
        return super().state_dict(*args, **kwargs)


def build(num_classes: int, delay_s: float = 10.0) -> nn.Module:
    return SlowToSave(delay_s, nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(8, num_classes))
