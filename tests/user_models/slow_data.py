"""A data set whose images take `delay_s` in all to decode on every rank but rank 0, as a large
data set does where a node reads a busy shared file system: building the tensor pipeline then
takes that much longer there (the rank is MPI's, as hpcbench's mpiexec sets it)."""
from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np


class SlowImages(Sequence):
    def __init__(self, count: int, delay_s: float):
        self.targets = [i % 4 for i in range(count)]  # labels without decoding
        self.delay_s = delay_s / count if os.environ.get("PMI_RANK", "0") != "0" else 0.0

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        time.sleep(self.delay_s)
        return np.random.default_rng(index).integers(0, 255, (32, 32, 3), dtype=np.uint8), self.targets[index]


def build(delay_s: float = 6.0, train_size: int = 128, test_size: int = 64):
    return SlowImages(train_size, delay_s / 2), SlowImages(test_size, delay_s / 2), ["a", "b", "c", "d"]
