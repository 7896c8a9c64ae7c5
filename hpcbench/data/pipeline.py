"""Choosing the pipeline that feeds the model (`data.pipeline`):

- `pil`: the original study's torchvision PIL transforms in DataLoader workers (pil_pipeline.py),
  kept exactly, as the reference;
- `tensor`: the data set as one uint8 tensor on the training device, augmented a batch at a
  time there (tensor_pipeline.py); the default.

`eval_preprocess` is the evaluation transform of either, for one image: serving classifies
exactly the pixels evaluation saw.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from PIL import Image

from hpcbench.config import RunConfig
from hpcbench.data.augment import resize_and_normalise
from hpcbench.data.pil_pipeline import build_pil_pipeline
from hpcbench.data.sampling import DataPipeline
from hpcbench.data.tensor_pipeline import build_tensor_pipeline
from hpcbench.data.transforms import eval_transform


def build_pipeline(run: RunConfig, rank: int, world_size: int, device: torch.device) -> DataPipeline:
    if run.data.pipeline == "pil":
        return build_pil_pipeline(run, rank, world_size)
    return build_tensor_pipeline(run, rank, world_size, device)


def eval_preprocess(pipeline: str, image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """RGB image -> the normalised (3, size, size) tensor the run's evaluation computed from it."""
    if pipeline == "pil":
        return eval_transform(image_size)

    def tensor_eval(image: Image.Image) -> torch.Tensor:
        pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).unsqueeze(0)
        return resize_and_normalise(pixels, image_size)[0]

    return tensor_eval
