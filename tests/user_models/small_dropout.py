"""A small CNN with dropout before its head (as mobilenet_v2 has), for tests where dropout's random
draws must come out the same: a resumed run's against the uninterrupted run's."""
from __future__ import annotations

from torch import nn


def build(num_classes: int, width: int = 16) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(2 * width, num_classes))
