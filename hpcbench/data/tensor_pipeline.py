"""The fast pipeline: the data set decoded once into a uint8 tensor on the training device,
augmented a whole batch at a time there (augment.py). No worker processes, no PIL per image.

Sources whose decoding is slow (image folders, shard sets) name a cache file
(`ImageSource.cache_path`); later runs read the decoded tensor from there. Rank 0 alone writes it:
N ranks writing the same file of gigabytes on a shared file system is N times the traffic for
one file.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterator, Sequence, Tuple

import torch

from hpcbench.config import RunConfig, per_device_batch
from hpcbench.data.augment import augment, resize_and_normalise
from hpcbench.data.sampling import DataPipeline, ShardSampler, train_batches, train_shard_sampler
from hpcbench.data.sources import ImageSource, balanced_first_n
from hpcbench.files import atomic_write_bytes, torch_bytes

log = logging.getLogger("hpcbench")


def _decode_nchw(source: ImageSource, indices: Sequence[int]) -> torch.Tensor:
    return torch.from_numpy(source.decode(indices)).permute(0, 3, 1, 2).contiguous()


def load_uint8(source: ImageSource, indices: Sequence[int], split: str, write_cache: bool = True) -> torch.Tensor:
    """(N, 3, H, W) uint8 images of `indices`, through the source's on-disk cache if it has one
    (written when missing if `write_cache`)."""
    cache = source.cache_path(indices, split)
    if cache is None:
        return _decode_nchw(source, indices)
    if cache.is_file():
        try:
            return torch.load(cache, weights_only=True)
        except Exception as error:  # a damaged cache is rebuilt, never trusted
            log.warning("ignoring the unreadable decode cache %s (%s)", cache, error)
    images = _decode_nchw(source, indices)
    if not write_cache:
        return images
    try:
        atomic_write_bytes(cache, torch_bytes(images))
    except OSError as error:  # a read-only data directory: decode again next time
        log.warning("cannot write the decode cache %s (%s)", cache, error)
    return images


class TensorBatches:
    """Batches of a device-resident split, iterated like a DataLoader by the trainer."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, count: int,
                 indices: Callable[[], torch.Tensor], transform: Callable[[torch.Tensor], torch.Tensor],
                 drop_single_last: bool):
        """`indices()` gives this epoch's `count` sample indices, in order."""
        self.images, self.labels, self.batch_size, self.count = images, labels, batch_size, count
        self.indices, self.transform, self.drop_single_last = indices, transform, drop_single_last
        self.generator = torch.Generator(device=images.device)

    def __len__(self) -> int:
        if self.drop_single_last:
            return train_batches(self.count, self.batch_size)
        return -(-self.count // self.batch_size)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        for batch in list(torch.split(self.indices(), self.batch_size))[: len(self)]:
            yield self.transform(self.images[batch]), self.labels[batch]


def build_tensor_pipeline(run: RunConfig, train_source: ImageSource, test_source: ImageSource, rank: int,
                          world_size: int, device: torch.device) -> DataPipeline:
    data, size = run.data, run.data.image_size
    splits = {}
    for split, source, limit in (("train", train_source, data.limit_train), ("test", test_source, data.limit_test)):
        indices = balanced_first_n(source.labels, limit)
        splits[split] = (load_uint8(source, indices, split, write_cache=rank == 0), torch.tensor([source.labels[i] for i in indices]))
    train_images, train_labels = (tensor.to(device) for tensor in splits["train"])
    # A rank evaluates only its shard of the test set, so only that shard goes to its device.
    all_test_images, all_test_labels = splits["test"]
    shard = torch.tensor(list(ShardSampler(len(all_test_labels), rank, world_size)), dtype=torch.long)
    test_images, test_labels = all_test_images[shard].to(device), all_test_labels[shard].to(device)
    sampler = train_shard_sampler(len(train_labels), rank, world_size, run.train.seed)
    batch = per_device_batch(run)

    def train_indices() -> torch.Tensor:
        return torch.tensor(list(sampler), device=device)

    train = TensorBatches(train_images, train_labels, batch, len(sampler), train_indices, lambda x: x,
                          drop_single_last=True)
    if data.augment:
        train.transform = lambda images: augment(images, size, train.generator)
    else:
        train.transform = lambda images: resize_and_normalise(images, size)
    in_order = torch.arange(len(shard), device=device)
    test = TensorBatches(test_images, test_labels, batch, len(shard), lambda: in_order,
                         lambda images: resize_and_normalise(images, size), drop_single_last=False)
    return DataPipeline(train, test, sampler, train_source.classes, len(train_labels), len(all_test_labels), rank,
                        "tensor")
