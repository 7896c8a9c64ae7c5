"""What every pipeline hands the trainer, and how the data is split over ranks.

Every pipeline (pil_pipeline.py, tensor_pipeline.py, stream_pipeline.py) builds a DataPipeline
from these pieces: training data is a seeded permutation per epoch, sharded over the ranks like
DistributedSampler (the stream pipeline's shard-wise order: stream_order.py);
evaluation reads disjoint shards without padding, so the all-reduced test metrics are exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List

from torch.utils.data import DistributedSampler, Sampler

# BatchNorm cannot train on one image ("expected more than 1 value per channel"): a last training
# batch of one is dropped, and a configuration whose ranks would train no batch is refused.
MIN_TRAIN_BATCH = 2


class ShardSampler(Sampler[int]):
    """Every `world_size`-th index from `rank`: disjoint shards that together cover the data set
    exactly once. Unlike DistributedSampler it adds no padding duplicates, so the all-reduced
    test metrics are the exact global ones."""

    def __init__(self, size: int, rank: int, world_size: int):
        self.indices = list(range(rank, size, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def train_shard_sampler(size: int, rank: int, world_size: int, seed: int) -> DistributedSampler:
    """A seeded permutation per epoch (set_epoch), split over the ranks; serial runs are rank 0 of 1."""
    return DistributedSampler(range(size), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)


def train_batches(count: int, batch_size: int) -> int:
    """Training steps per epoch of a shard of `count` images (a last batch of one is dropped)."""
    full, rest = divmod(count, batch_size)
    return full + int(rest >= MIN_TRAIN_BATCH)


@dataclass
class DataPipeline:
    train_loader: Any  # iterable of (images, labels) batches with len() and a `generator`
    test_loader: Any
    train_sampler: Any  # set_epoch(epoch) sets the epoch's order: a DistributedSampler, a StreamSampler
    classes: List[str]
    num_train: int  # images in the (limited) training set, all ranks together
    num_test: int
    rank: int
    kind: str  # tensor | compressed | stream | pil: the pipeline that feeds the model (auto resolved)
    digest: str = ""  # the shard set's (data=shards): a resumed run must read the same one
    choice: str = ""  # how data.pipeline=auto chose `kind` (data/choice.py), logged when training starts

    def set_epoch(self, epoch: int, seed: int) -> None:
        """Shuffling and augmentation seeds are functions of (seed, epoch, rank) alone, so an
        epoch trains identically whether or not the run was interrupted before it."""
        self.train_sampler.set_epoch(epoch)
        self.train_loader.generator.manual_seed((seed * 100_003 + epoch) * 1_009 + self.rank)
