"""Choosing the pipeline that feeds the model (`data.pipeline`):

- `pil`: the original study's torchvision PIL transforms in DataLoader workers (pil_pipeline.py),
  kept exactly, as the reference;
- `tensor`: the data set as one uint8 tensor on the training device, augmented a batch at a
  time there (tensor_pipeline.py);
- `auto` (the default): `tensor` when the images are of one size and the ranks' copies fit in
  half the device's memory, else `pil`. The choice is logged and recorded in summary.json.

`eval_preprocess` is the evaluation transform of either, for one image: serving classifies
exactly the pixels evaluation saw.
"""
from __future__ import annotations

import logging
import os
from typing import Callable

import numpy as np
import torch
from PIL import Image

from hpcbench.config import RunConfig
from hpcbench.data.augment import resize_and_normalise
from hpcbench.data.pil_pipeline import build_pil_pipeline
from hpcbench.data.sampling import DataPipeline
from hpcbench.data.sources import ImageSource, MixedImageSizes, balanced_first_n, open_sources
from hpcbench.data.tensor_pipeline import build_tensor_pipeline
from hpcbench.data.transforms import eval_transform

log = logging.getLogger("hpcbench")

RESIDENT_SHARE = 0.5  # the most of a device's memory data.pipeline=auto lets the data sets take


def device_memory_bytes(device: torch.device) -> int:
    """Total memory of the training device (the node's RAM for a CPU). Total, not free: every rank
    must come to the same choice."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resident_fits(run: RunConfig, train: ImageSource, test: ImageSource, device: torch.device) -> tuple[bool, str]:
    """Whether every rank on a node can hold both splits as uint8 (sized by the first image)."""
    count = len(balanced_first_n(train.labels, run.data.limit_train)) + len(balanced_first_n(test.labels,
                                                                                            run.data.limit_test))
    need = count * train.decode([0]).nbytes * (run.mode.ranks // run.mode.nodes)
    budget = RESIDENT_SHARE * device_memory_bytes(device)
    return need <= budget, f"{need / 2**30:.1f} GiB of images for {run.mode.ranks // run.mode.nodes} rank(s) " \
                           f"of a {device.type} device, {budget / 2**30:.1f} GiB allowed"


def build_pipeline(run: RunConfig, rank: int, world_size: int, device: torch.device) -> DataPipeline:
    train, test = open_sources(run.data)
    kind = run.data.pipeline
    if kind == "auto":
        fits, why = resident_fits(run, train, test, device)
        kind = "tensor" if fits else "pil"
        if not fits:
            log.info("data.pipeline=auto: pil, the images do not fit on the device (%s)", why)
    if kind == "tensor":
        try:
            return build_tensor_pipeline(run, train, test, rank, world_size, device)
        except MixedImageSizes as error:
            if run.data.pipeline == "tensor":
                raise
            log.info("data.pipeline=auto: pil, the images are not all of one size (%s)", str(error).split(";")[0])
    return build_pil_pipeline(run, train, test, rank, world_size)


def eval_preprocess(pipeline: str, image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """RGB image -> the normalised (3, size, size) tensor the run's evaluation computed from it."""
    if pipeline == "pil":
        return eval_transform(image_size)

    def tensor_eval(image: Image.Image) -> torch.Tensor:
        pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).unsqueeze(0)
        return resize_and_normalise(pixels, image_size)[0]

    return tensor_eval
