"""What the trainer iterates: a DataPipeline of training and test batches, built by one of two
pipelines (`data.pipeline`):

- `pil`: the original study's torchvision PIL transforms in DataLoader workers (pil_pipeline.py),
  kept exactly, as the reference;
- `tensor`: the data set as one uint8 tensor on the training device, augmented a batch at a
  time there (tensor_pipeline.py); the default.

Both split the training set the same way: a seeded permutation per epoch, sharded over the ranks
like DistributedSampler; both evaluate on disjoint shards without padding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List

import torch
from torch.utils.data import DistributedSampler, Sampler

from hpcbench.config import RunConfig


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


@dataclass
class DataPipeline:
    train_loader: Any  # iterable of (images, labels) batches with len() and a `generator`
    test_loader: Any
    train_sampler: DistributedSampler
    classes: List[str]
    num_train: int  # images in the (limited) training set, all ranks together
    num_test: int
    rank: int

    def set_epoch(self, epoch: int, seed: int) -> None:
        """Shuffling and augmentation seeds are functions of (seed, epoch, rank) alone, so an
        epoch trains identically whether or not the run was interrupted before it."""
        self.train_sampler.set_epoch(epoch)
        self.train_loader.generator.manual_seed((seed * 100_003 + epoch) * 1_009 + self.rank)


def build_pipeline(run: RunConfig, rank: int, world_size: int, device: torch.device) -> DataPipeline:
    if run.data.pipeline == "pil":
        from hpcbench.data.pil_pipeline import build_pil_pipeline

        return build_pil_pipeline(run, rank, world_size)
    from hpcbench.data.tensor_pipeline import build_tensor_pipeline

    return build_tensor_pipeline(run, rank, world_size, device)
