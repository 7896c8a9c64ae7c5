"""Choosing the pipeline that feeds the model (`data.pipeline`):

- `pil`: the original study's torchvision PIL transforms in DataLoader workers (pil_pipeline.py),
  kept exactly, as the reference;
- `tensor`: the data set as one uint8 tensor on the training device, augmented a batch at a
  time there (tensor_pipeline.py);
- `auto` (the default): `tensor` when the images are of one size, a rank's copy fits in half its
  device's memory and what a node's ranks build at once in half its RAM, else `pil`. The choice
  is logged and recorded in summary.json.

`eval_preprocess` is the evaluation transform of either, for one image: serving classifies
exactly the pixels evaluation saw.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Tuple

import numpy as np
import torch
from PIL import Image

from hpcbench.config import DataConfig, RunConfig
from hpcbench.data.augment import resize_and_normalise
from hpcbench.data.custom import open_custom_sources
from hpcbench.data.pil_pipeline import build_pil_pipeline
from hpcbench.data.sampling import DataPipeline
from hpcbench.data.sources import ImageSource, MixedImageSizes, balanced_first_n, open_source
from hpcbench.data.tensor_pipeline import build_tensor_pipeline
from hpcbench.data.transforms import eval_transform

log = logging.getLogger("hpcbench")

RESIDENT_SHARE = 0.5  # the most of a device's memory (and of a node's RAM) data.pipeline=auto lets the data take
# While a rank builds its copy on a first run it holds the decoded images about three times in host
# memory at once (the decoded arrays, their stack, its NCHW copy and serialised cache in turn).
HOST_COPIES_WHILE_BUILDING = 3


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def device_memory_bytes(device: torch.device) -> int:
    """Total memory of the training device (the node's RAM for a CPU). Total, not free: every rank
    must come to the same choice."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return host_memory_bytes()


def resident_fits(run: RunConfig, train: ImageSource, test: ImageSource, device: torch.device) -> tuple[bool, str]:
    """Whether every rank can hold both splits as uint8 (sized by the first image) on its device,
    and the node's RAM can hold what its ranks build at once. A GPU holds its own rank's copy; CPU
    ranks share the node's RAM, so their copies add up. Judged per node, the same for 1 rank as for
    8, so that a scaling curve is not fed by two pipelines."""
    count = len(balanced_first_n(train.labels, run.data.limit_train)) + len(balanced_first_n(test.labels,
                                                                                            run.data.limit_test))
    copy = count * train.decode([0]).nbytes
    ranks = run.mode.ranks // run.mode.nodes
    on_device = copy * (1 if device.type == "cuda" else ranks)
    device_budget = RESIDENT_SHARE * device_memory_bytes(device)
    building = copy * ranks * HOST_COPIES_WHILE_BUILDING
    host_budget = RESIDENT_SHARE * host_memory_bytes()
    why = (f"{on_device / 2**30:.1f} GiB of images per {device.type} device, {device_budget / 2**30:.1f} GiB allowed; "
           f"{building / 2**30:.1f} GiB of host memory while {ranks} rank(s) build them, {host_budget / 2**30:.1f} GiB allowed")
    return on_device <= device_budget and building <= host_budget, why


def open_sources(data: DataConfig) -> Tuple[ImageSource, ImageSource]:
    """(train, test) of the data set `data` names, or of the user's own (`data._target_`)."""
    if data._target_:
        return open_custom_sources(data)
    return open_source(data, "train"), open_source(data, "test")


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
