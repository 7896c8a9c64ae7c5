"""Your model: any function that returns an nn.Module, called as build(num_classes=..., **model.args)."""
from __future__ import annotations

from torch import nn


def build(num_classes: int, width: int = 16, depth: int = 3) -> nn.Module:
    """A small CNN: `depth` blocks of conv-BN-ReLU (width doubling, stride 2), then a linear head."""
    layers, channels = [], 3
    for block in range(depth):
        out = width * 2**block
        layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))
