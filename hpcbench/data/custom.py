"""The user's own data set (`data._target_`), as an ImageSource like the built-in ones.

`_target_(**data.args)` (Hydra's instantiate) returns `(train, test, class_names)`; train and test
are sequences (a torch Dataset, a list) of `(image, label)` pairs, where an image is a PIL image,
an H x W x 3 uint8 array or a 3 x H x W uint8 tensor. A `targets` attribute (torchvision's name)
gives the labels without building every image; without it each item is read once for its label.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from hpcbench.config import DataConfig
from hpcbench.data.sources import stack_same_size
from hpcbench.errors import DataError
from hpcbench.user_code import call_target


def _as_array(image: Any, where: str) -> np.ndarray:
    """An image of any accepted kind as an H x W x 3 uint8 array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        image = image.numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
            image = image.transpose(1, 2, 0)  # C x H x W -> H x W x C
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim in (2, 3):
        if image.ndim == 2 or image.shape[2] == 1:
            image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=2)
        if image.shape[2] == 3:
            return image
    shape = getattr(image, "shape", None)
    raise DataError(f"{where} is a {type(image).__name__}{f' of shape {shape}' if shape else ''}"
                    f"{f' and dtype {image.dtype}' if hasattr(image, 'dtype') else ''}: hpcbench takes PIL images, "
                    f"H x W x 3 uint8 arrays or 3 x H x W uint8 tensors")


class CustomSource:
    """One split of the user's data set: the ImageSource interface over an (image, label) sequence."""

    def __init__(self, dataset: Sequence, classes: List[str], name: str):
        self.dataset, self.classes, self.name = dataset, list(classes), name
        targets = getattr(dataset, "targets", None)
        self.labels = [int(label) for label in (targets if targets is not None else (y for _, y in dataset))]
        if len(self.labels) != len(dataset):
            raise DataError(f"{name}: {len(self.labels)} targets for {len(dataset)} items")
        bad = next((label for label in self.labels if not 0 <= label < len(self.classes)), None)
        if bad is not None:
            raise DataError(f"{name} has label {bad}, but {len(self.classes)} class names (labels 0-{len(self.classes) - 1})")

    def __len__(self) -> int:
        return len(self.labels)

    def array(self, index: int) -> np.ndarray:
        return _as_array(self.dataset[index][0], f"{self.name}[{index}]")

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.array(index))

    def decode(self, indices: Sequence[int]) -> np.ndarray:
        return stack_same_size([self.array(i) for i in indices], [f"{self.name}[{i}]" for i in indices])

    def cache_path(self, indices: Sequence[int], split: str) -> Optional[Path]:
        return None  # the user's code decides how images are made; never cached behind its back


def open_custom_sources(data: DataConfig) -> Tuple[CustomSource, CustomSource]:
    """(train, test) of the user's `data._target_`."""
    built = call_target("data._target_", data._target_, data.args, DataError)
    if not (isinstance(built, (tuple, list)) and len(built) == 3):
        raise DataError(f"data._target_={data._target_} must return (train, test, class names), "
                        f"got {type(built).__name__}")
    train, test, classes = built
    return (CustomSource(train, classes, f"{data.name} train set"),
            CustomSource(test, classes, f"{data.name} test set"))
