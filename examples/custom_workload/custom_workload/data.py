"""Your data: any function that returns (train, test, class names), where train and test are
sequences (a torch Dataset, a list) of (image, label) pairs. Images may be PIL images, uint8
H x W x 3 arrays or uint8 3 x H x W tensors. hpcbench feeds images of one size from the training
device with batched augmentation; images of several sizes through DataLoader workers.

Here: stripes in four orientations, in random colours, generated from a seed (no files, no network).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image

CLASSES = ["horizontal", "vertical", "diagonal", "checkered"]


def _image(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    period = rng.integers(3, 7)
    phase = rng.integers(0, period)
    pattern = [(y + phase) // period, (x + phase) // period, (x + y + phase) // period,
               (x // period + y // period + phase)][label] % 2
    colours = rng.integers(0, 256, size=(2, 3))
    image = colours[pattern].astype(float) + rng.normal(0, 25, size=(size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


class Stripes(Sequence):
    """`count` images; with `sizes`, each image's side is drawn from them (several sizes: PIL images)."""

    def __init__(self, count: int, seed: int, size: int, sizes: Sequence[int] = ()):
        self.count, self.seed, self.size, self.sizes = count, seed, size, list(sizes)
        self.targets = [i % len(CLASSES) for i in range(count)]  # read without building the images

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        if not 0 <= index < self.count:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        if self.sizes:
            side = int(rng.choice(self.sizes))
            return Image.fromarray(_image(rng, self.targets[index], side)), self.targets[index]
        return _image(rng, self.targets[index], self.size), self.targets[index]


def build(train_size: int = 512, test_size: int = 128, size: int = 32, sizes: List[int] = (),
          seed: int = 0) -> Tuple[Stripes, Stripes, List[str]]:
    return Stripes(train_size, seed, size, sizes), Stripes(test_size, seed + 1, size, sizes), list(CLASSES)
