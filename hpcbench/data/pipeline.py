"""Choosing the pipeline that feeds the model (`data.pipeline`):

- `pil`: the original study's torchvision PIL transforms in DataLoader workers (pil_pipeline.py),
  kept exactly, as the reference;
- `tensor`: the data set as one uint8 tensor on the training device, augmented a batch at a
  time there (tensor_pipeline.py);
- `compressed` / `stream` (a shard set, `data=shards`): JPEG bytes held in host memory / read from
  the shard files, decoded per batch, then augmented like `tensor` (stream_pipeline.py);
- `auto` (the default): the first that fits the memory budget (`data.memory_budget_mb`, else
  half of a device's memory and half of a node's RAM), judged per device and per node, the same
  for 1 rank as for 8 so that one scaling curve is fed by one pipeline: `tensor` when the images
  are of one size and a rank's decoded copy fits its device and what a node's ranks build at once
  fits its RAM; for a shard set then `compressed` when the node's ranks' JPEG bytes fit its RAM,
  else `stream`; for an image folder `pil`. The choice and its reason are logged, and the
  choice is recorded in summary.json.

`eval_preprocess` is the evaluation transform of either, for one image: serving classifies
exactly the pixels evaluation saw.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Tuple

import numpy as np
import torch
from PIL import Image

from hpcbench.config import DataConfig, RunConfig
from hpcbench.data.augment import resize_and_normalise
from hpcbench.data.custom import open_custom_sources
from hpcbench.data.pil_pipeline import build_pil_pipeline
from hpcbench.data.sampling import DataPipeline
from hpcbench.data.shards import ShardSet, ShardSource
from hpcbench.data.sources import ImageSource, MixedImageSizes, balanced_first_n, open_source
from hpcbench.data.stream_pipeline import build_stream_pipeline, resized_uint8
from hpcbench.data.tensor_pipeline import build_tensor_pipeline
from hpcbench.data.transforms import eval_transform
from hpcbench.errors import ConfigError

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


def memory_budgets(run: RunConfig, device: torch.device) -> tuple[float, float]:
    """(bytes of data a device may hold, bytes of data a node's RAM may hold)."""
    if run.data.memory_budget_mb is not None:
        budget = run.data.memory_budget_mb * 2**20
        return budget, budget
    return RESIDENT_SHARE * device_memory_bytes(device), RESIDENT_SHARE * host_memory_bytes()


def ranks_per_node(run: RunConfig) -> int:
    return run.mode.ranks // run.mode.nodes


def resident_fits(run: RunConfig, train: ImageSource, test: ImageSource, device: torch.device) -> tuple[bool, str]:
    """Whether every rank can hold both splits as uint8 (sized by the first image) on its device,
    and the node's RAM can hold what its ranks build at once. A GPU holds its own rank's copy; CPU
    ranks share the node's RAM, so their copies add up."""
    count = len(balanced_first_n(train.labels, run.data.limit_train)) + len(balanced_first_n(test.labels,
                                                                                            run.data.limit_test))
    copy = count * train.decode([0]).nbytes
    ranks = ranks_per_node(run)
    on_device = copy * (1 if device.type == "cuda" else ranks)
    device_budget, host_budget = memory_budgets(run, device)
    building = copy * ranks * HOST_COPIES_WHILE_BUILDING
    why = (f"{on_device / 2**30:.2f} GiB of decoded images per {device.type} device, {device_budget / 2**30:.2f} GiB "
           f"allowed; {building / 2**30:.2f} GiB of host memory while {ranks} rank(s) build them, "
           f"{host_budget / 2**30:.2f} GiB allowed")
    return on_device <= device_budget and building <= host_budget, why


def compressed_fits(run: RunConfig, train: ShardSource, test: ShardSource, device: torch.device) -> tuple[bool, str]:
    """Whether the JPEG bytes of the images the run uses, once per rank of a node, fit the node's RAM budget."""
    # A shard set holds its images in the order data.limit_* takes them: the first N are the used ones.
    used = sum(int(source.index.length[:limit].sum())
               for source, limit in ((train, run.data.limit_train), (test, run.data.limit_test)))
    ranks = ranks_per_node(run)
    host_budget = memory_budgets(run, device)[1]
    why = f"{used * ranks / 2**30:.2f} GiB of JPEG bytes for {ranks} rank(s) of a node, {host_budget / 2**30:.2f} GiB allowed"
    return used * ranks <= host_budget, why


def open_sources(data: DataConfig) -> Tuple[ImageSource, ImageSource]:
    """(train, test) of the data set `data` names, or of the user's own (`data._target_`)."""
    if data._target_:
        return open_custom_sources(data)
    if data.name == "shards":
        if data.root is None:
            raise ConfigError("data=shards needs data.root (a folder written by hpcbench-data pack)")
        shards = ShardSet(Path(data.root))
        return ShardSource(shards, "train"), ShardSource(shards, "test")
    return open_source(data, "train"), open_source(data, "test")


def choose_pipeline(run: RunConfig, train: ImageSource, test: ImageSource, device: torch.device) -> str:
    """What data.pipeline=auto resolves to here (see the module's docstring), logged with why."""
    shards = isinstance(train, ShardSource) and isinstance(test, ShardSource)
    if shards and train.shards.image_size is None:
        fits, why = False, "the images are not all of one size"
    else:
        fits, why = resident_fits(run, train, test, device)
    if fits:
        return "tensor"
    if shards:
        compressed, compressed_why = compressed_fits(run, train, test, device)
        kind = "compressed" if compressed else "stream"
        log.info("data.pipeline=auto: %s, not tensor (%s; %s)", kind, why, compressed_why)
        return kind
    log.info("data.pipeline=auto: pil, the images do not fit on the device (%s); a shard set streams them "
             "faster (hpcbench-data pack, data=shards)", why)
    return "pil"


def build_pipeline(run: RunConfig, rank: int, world_size: int, device: torch.device) -> DataPipeline:
    train, test = open_sources(run.data)
    kind = run.data.pipeline
    if kind in ("compressed", "stream") and run.data.name != "shards":
        raise ConfigError(f"data.pipeline={kind} reads a shard set: pack the images with "
                          f"`hpcbench-data pack {run.data.root or 'IMAGE_FOLDER'} OUT`, then use data=shards data.root=OUT")
    if kind == "auto":
        kind = choose_pipeline(run, train, test, device)
    if kind in ("compressed", "stream"):
        return build_stream_pipeline(run, train.shards, rank, world_size, device, resident=kind == "compressed")
    if kind == "tensor":
        try:
            pipeline = build_tensor_pipeline(run, train, test, rank, world_size, device)
        except MixedImageSizes as error:
            if run.data.pipeline == "tensor":
                raise
            log.info("data.pipeline=auto: pil, the images are not all of one size (%s)", str(error).split(";")[0])
            pipeline = build_pil_pipeline(run, train, test, rank, world_size)
    else:
        pipeline = build_pil_pipeline(run, train, test, rank, world_size)
    if isinstance(train, ShardSource):
        pipeline.digest = train.shards.digest
    return pipeline


def eval_preprocess(pipeline: str, image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """RGB image -> the normalised (3, size, size) tensor the run's evaluation computed from it."""
    if pipeline == "pil":
        return eval_transform(image_size)
    decoded_to_size = pipeline in ("compressed", "stream")

    def tensor_eval(image: Image.Image) -> torch.Tensor:
        pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
        if decoded_to_size and max(pixels.shape[-2:]) > image_size:  # the stream's decode step (to uint8)
            pixels = resized_uint8(pixels, (image_size, image_size))
        return resize_and_normalise(pixels.unsqueeze(0), image_size)[0]

    return tensor_eval
