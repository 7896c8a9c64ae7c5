"""The PIL pipeline of the original study: torchvision transforms in DataLoader workers."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from hpcbench.config import RunConfig, per_device_batch
from hpcbench.data.sampling import MIN_TRAIN_BATCH, DataPipeline, ShardSampler, train_shard_sampler
from hpcbench.data.sources import ImageSource, balanced_first_n
from hpcbench.data.transforms import eval_transform, train_transform


class TransformedSubset(Dataset):
    """`source[indices[i]]` with `transform` applied to the image."""

    def __init__(self, source: ImageSource, indices: Sequence[int], transform: Callable):
        self.source, self.indices, self.transform = source, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = self.indices[i]
        return self.transform(self.source.load(index)), self.source.labels[index]


def build_pil_pipeline(run: RunConfig, train_source: ImageSource, test_source: ImageSource, rank: int,
                       world_size: int) -> DataPipeline:
    data = run.data
    train_set = TransformedSubset(
        train_source, balanced_first_n(train_source.labels, data.limit_train), train_transform(data.image_size, data.augment)
    )
    test_set = TransformedSubset(
        test_source, balanced_first_n(test_source.labels, data.limit_test), eval_transform(data.image_size)
    )
    batch = per_device_batch(run)
    # One sampler for serial and DDP runs: a seeded permutation per epoch, split over the ranks.
    train_sampler = train_shard_sampler(len(train_set), rank, world_size, run.train.seed)
    workers = dict(num_workers=data.num_workers, persistent_workers=False, pin_memory=run.mode.device == "cuda")
    drop_last = 0 < len(train_sampler) % batch < MIN_TRAIN_BATCH
    train_loader = DataLoader(
        train_set, batch_size=batch, sampler=train_sampler, generator=torch.Generator(), drop_last=drop_last, **workers
    )
    # Its own generator: creating an iterator draws its workers' seed, never from the global stream.
    test_loader = DataLoader(test_set, batch_size=batch, sampler=ShardSampler(len(test_set), rank, world_size),
                             generator=torch.Generator().manual_seed(rank), **workers)
    return DataPipeline(train_loader, test_loader, train_sampler, train_source.classes, len(train_set), len(test_set),
                        rank, "pil")
