"""Building the pipeline that feeds the model (`data.pipeline`):

- `pil`: the original study's torchvision PIL transforms in DataLoader workers (pil_pipeline.py),
  kept exactly, as the reference;
- `tensor`: the data set as one uint8 tensor on the training device, augmented a batch at a
  time there (tensor_pipeline.py);
- `compressed` / `stream` (a shard set, `data=shards`): JPEG bytes held in host memory / read from
  the shard files, decoded per batch, then augmented like `tensor` (stream_pipeline.py);
- `auto` (the default): what fits the memory budget, decided once for every rank (choice.py).
The pipeline that ran is recorded in summary.json and in the checkpoints.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import torch

from hpcbench.config import DataConfig, RunConfig
from hpcbench.data.choice import Decision, decide_pipeline
from hpcbench.data.custom import open_custom_sources
from hpcbench.data.open_files import raise_open_file_limit
from hpcbench.data.pil_pipeline import build_pil_pipeline
from hpcbench.data.sampling import DataPipeline
from hpcbench.data.shard_reader import ShardSource
from hpcbench.data.shards import ShardSet
from hpcbench.data.sources import ImageSource, MixedImageSizes, open_source
from hpcbench.data.stream_pipeline import build_stream_pipeline
from hpcbench.data.tensor_pipeline import build_tensor_pipeline
from hpcbench.errors import ConfigError

Sources = Tuple[ImageSource, ImageSource]  # (train, test)


def open_sources(data: DataConfig) -> Sources:
    """(train, test) of the data set `data` names, or of the user's own (`data._target_`)."""
    if data._target_:
        return open_custom_sources(data)
    if data.name == "shards":
        if data.root is None:
            raise ConfigError("data=shards needs data.root (a folder written by hpcbench-data pack)")
        shards = ShardSet(Path(data.root))
        return ShardSource(shards, "train"), ShardSource(shards, "test")
    return open_source(data, "train"), open_source(data, "test")


def build_pipeline(run: RunConfig, rank: int, world_size: int, device: torch.device,
                   decision: Optional[Decision] = None, sources: Optional[Sources] = None) -> DataPipeline:
    """This rank's pipeline, as decided for every rank (choice.decide_pipeline; None: this process
    alone decides), over `sources` (opened here when None)."""
    raise_open_file_limit()  # before any worker starts: they inherit it
    train, test = sources or open_sources(run.data)
    if run.data.pipeline in ("compressed", "stream") and not isinstance(train, ShardSource):
        raise ConfigError(f"data.pipeline={run.data.pipeline} reads a shard set: pack the images with "
                          f"`hpcbench-data pack {run.data.root or 'IMAGE_FOLDER'} OUT`, then use data=shards data.root=OUT")
    decision = decision or decide_pipeline(run, train, test, device)
    pipeline = _build(run, rank, world_size, device, decision.kind, train, test)
    pipeline.choice = pipeline.choice or decision.note
    return pipeline


def _build(run: RunConfig, rank: int, world_size: int, device: torch.device, kind: str, train: ImageSource,
           test: ImageSource) -> DataPipeline:
    if kind in ("compressed", "stream"):
        return build_stream_pipeline(run, train.shards, rank, world_size, device, resident=kind == "compressed")
    if kind == "tensor":
        try:
            pipeline = build_tensor_pipeline(run, train, test, rank, world_size, device)
        except MixedImageSizes as error:
            if run.data.pipeline == "tensor":
                raise
            pipeline = build_pil_pipeline(run, train, test, rank, world_size)
            pipeline.choice = f"data.pipeline=auto: pil, the images are not all of one size ({str(error).split(';')[0]})"
    else:
        pipeline = build_pil_pipeline(run, train, test, rank, world_size)
    if isinstance(train, ShardSource):
        pipeline.digest = train.shards.digest
    return pipeline
