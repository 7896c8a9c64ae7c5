"""The fast pipeline: the data set decoded once into a uint8 tensor on the training device,
augmented a whole batch at a time there (augment.py). No worker processes, no PIL per image.

Decoding an image folder is cached next to the data (`<root>/.hpcbench-cache/`), keyed by the
files' names, sizes and modification times, so later runs skip it.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Callable, Iterator, Sequence, Tuple

import numpy as np
import torch

from hpcbench.config import RunConfig, per_device_batch
from hpcbench.data.augment import augment, resize_and_normalise
from hpcbench.data.pipeline import DataPipeline, ShardSampler, train_shard_sampler
from hpcbench.data.sources import (
    Cifar10Source,
    ImageFolderSource,
    ImageSource,
    SyntheticSource,
    balanced_first_n,
    open_source,
)
from hpcbench.errors import DataError
from hpcbench.rundir import atomic_write_bytes, torch_bytes

log = logging.getLogger("hpcbench")

CACHE_DIR = ".hpcbench-cache"


def _fingerprint(source: ImageFolderSource, indices: Sequence[int]) -> str:
    digest = hashlib.sha1()
    for index in indices:
        path = source.paths[index]
        stat = path.stat()
        digest.update(f"{path.relative_to(source.root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _decode(source: ImageSource, indices: Sequence[int]) -> np.ndarray:
    if isinstance(source, SyntheticSource):
        return np.stack([source.array(i) for i in indices])
    if isinstance(source, Cifar10Source):
        return source.arrays[list(indices)]
    arrays = []
    for index in indices:
        array = np.asarray(source.load(index))
        if arrays and array.shape != arrays[0].shape:
            raise DataError(
                f"the tensor pipeline needs images of one size: {source.paths[index]} is {array.shape[1]}x{array.shape[0]}, "
                f"others {arrays[0].shape[1]}x{arrays[0].shape[0]}; use data.pipeline=pil"
            )
        arrays.append(array)
    return np.stack(arrays)


def _decode_nchw(source: ImageSource, indices: Sequence[int]) -> torch.Tensor:
    return torch.from_numpy(_decode(source, indices)).permute(0, 3, 1, 2).contiguous()


def load_uint8(source: ImageSource, indices: Sequence[int], split: str) -> torch.Tensor:
    """(N, 3, H, W) uint8 images of `indices`; image folders go through the on-disk cache."""
    if not isinstance(source, ImageFolderSource):
        return _decode_nchw(source, indices)
    cache = source.root / CACHE_DIR / f"{split}-{len(indices)}-{_fingerprint(source, indices)}.pt"
    if cache.is_file():
        try:
            return torch.load(cache, weights_only=True)
        except Exception as error:  # a damaged cache is rebuilt, never trusted
            log.warning("ignoring the unreadable decode cache %s (%s)", cache, error)
    images = _decode_nchw(source, indices)
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

    def _drops_last(self) -> bool:
        # BatchNorm cannot train on one image: drop a last batch of one, as pil_pipeline.py does.
        return self.drop_single_last and self.count % self.batch_size == 1

    def __len__(self) -> int:
        return -(-self.count // self.batch_size) - int(self._drops_last())

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        for batch in list(torch.split(self.indices(), self.batch_size))[: len(self)]:
            yield self.transform(self.images[batch]), self.labels[batch]


def build_tensor_pipeline(run: RunConfig, rank: int, world_size: int, device: torch.device) -> DataPipeline:
    data, size = run.data, run.data.image_size
    splits = {}
    for split, limit in (("train", data.limit_train), ("test", data.limit_test)):
        source = open_source(data, split, run.train.seed)
        indices = balanced_first_n(source.labels, limit)
        images = load_uint8(source, indices, split).to(device)
        labels = torch.tensor([source.labels[i] for i in indices], device=device)
        splits[split] = (source, images, labels)
    train_source, train_images, train_labels = splits["train"]
    _, test_images, test_labels = splits["test"]
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
    shard = torch.tensor(list(ShardSampler(len(test_labels), rank, world_size)), device=device, dtype=torch.long)
    test = TensorBatches(test_images, test_labels, batch, len(shard), lambda: shard,
                         lambda images: resize_and_normalise(images, size), drop_single_last=False)
    return DataPipeline(train, test, sampler, train_source.classes, len(train_labels), len(test_labels), rank)
