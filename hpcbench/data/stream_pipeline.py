"""The stream pipeline: data sets larger than memory, read as JPEG bytes from a shard set
(data/shards.py) a batch at a time, decoded per batch, then augmented on the training device by
the same batched code as the resident pipeline (augment.py).

- `stream`: every batch's bytes are read from the shard files (one pread per image);
- `compressed`: the used images' JPEG bytes are read into host memory once (pinned for a GPU), and
  batches are decoded from there: no disk reads after the start.
Decoding: on a GPU, in batches by nvJPEG (`torchvision.io.decode_jpeg(..., device="cuda")`), the
DataLoader workers only read bytes; on a CPU, by libjpeg-turbo through the same call, in the
DataLoader workers (`data.num_workers`). Each image is resized to the batch's source size (its
own size when the shard set's images all share one no larger than `data.image_size`, else
`data.image_size` square: the study's first transform, `Resize((size, size))`), so images of mixed
sizes make one batch; random-resized-crop, flip, rotation and colour jitter follow on the device.

Host memory is bounded by the batches in flight (2 per worker), whatever the data set's size.
The workers persist for the run: the order of an epoch is computed in the worker from the epoch,
by picklable objects (workers started by forkserver, Python 3.14's default, or spawn receive the
dataset pickled), and `compressed` keeps its bytes in shared memory where workers do not fork, so
that they receive a handle, not a copy. The loaders draw their workers' seeds from generators of
their own, never from the global one that dropout draws from: a resumed run, which starts its
workers in a later epoch, trains exactly as the uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.multiprocessing
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.io import ImageReadMode, decode_jpeg

from hpcbench.config import RunConfig, per_device_batch
from hpcbench.data.augment import augment, resize_and_normalise
from hpcbench.data.jpeg_errors import decode_failure
from hpcbench.data.sampling import DataPipeline, train_batches
from hpcbench.data.shard_reader import ShardReader
from hpcbench.data.shards import ShardSet
from hpcbench.data.stream_order import rank_eval_positions, rank_train_order, train_images_per_rank, used_per_shard

Size = Tuple[int, int]  # (height, width)


def source_size(shards: ShardSet, image_size: int) -> Size:
    """The size every image is decoded to before augmentation (see the module's docstring)."""
    if shards.image_size is not None and max(shards.image_size) <= image_size:
        width, height = shards.image_size
        return height, width
    return image_size, image_size


def decode_batch(jpegs: List[torch.Tensor], size: Size, device: torch.device,
                 name_of: Optional[Callable[[int], str]] = None) -> torch.Tensor:
    """JPEG byte tensors -> one (N, 3, height, width) uint8 tensor on `device`; `name_of(i)` names
    image i in the error about one that cannot be decoded (asked only then: names cost time)."""
    try:
        images = decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as error:
        raise decode_failure(error, jpegs, device, name_of) from None
    return torch.stack([resized_uint8(image, size) for image in images])


def resized_uint8(image: torch.Tensor, size: Size) -> torch.Tensor:
    if tuple(image.shape[-2:]) == size:
        return image
    if image.device.type == "cpu":  # torch's uint8 kernel (what torchvision's Resize uses): 3x faster than float
        return F.interpolate(image.unsqueeze(0), size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    resized = F.interpolate(image.unsqueeze(0).float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return resized.round_().clamp_(0, 255).to(torch.uint8)[0]


@dataclass(frozen=True)
class TrainOrder:
    """A rank's training positions of an epoch (stream_order.py), computed where batches are read."""

    used: np.ndarray
    seed: int
    rank: int
    world_size: int
    window: int

    def __call__(self, epoch: int) -> np.ndarray:
        return rank_train_order(self.used, self.seed, epoch, self.rank, self.world_size, self.window)


@dataclass(frozen=True)
class EvalOrder:
    """A rank's test positions: the same every epoch."""

    positions: np.ndarray

    def __call__(self, epoch: int) -> np.ndarray:
        return self.positions


class BatchReader(Dataset):
    """Item (epoch, b): batch b of that epoch's order, as (decoded uint8 images, labels), or, when
    the device decodes, as (all JPEG bytes back to back, their lengths, labels, positions). The
    order is computed where the batch is read, from the epoch alone, so the DataLoader's workers
    live as long as the run (a fork per epoch costs a large training process dearly)."""

    def __init__(self, reader: ShardReader, batch_size: int, size: Size, decode_here: bool,
                 order: Callable[[int], np.ndarray]):  # TrainOrder or EvalOrder: picklable
        self.reader, self.batch_size, self.size, self.decode_here = reader, batch_size, size, decode_here
        self.order = order
        self._epoch, self._positions = -1, np.zeros(0, dtype=np.int64)

    def positions(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch, self._positions = epoch, self.order(epoch)
        return self._positions

    def __getitem__(self, key: Tuple[int, int]):
        epoch, batch = key
        positions = self.positions(epoch)[batch * self.batch_size:(batch + 1) * self.batch_size]
        labels = torch.from_numpy(self.reader.index.label[positions])
        jpegs = [torch.frombuffer(bytearray(self.reader.read(int(p))), dtype=torch.uint8) for p in positions]
        if self.decode_here:
            return decode_batch(jpegs, self.size, torch.device("cpu"), self.namer(positions)), labels
        return torch.cat(jpegs), torch.tensor([len(j) for j in jpegs]), labels, torch.from_numpy(positions)

    def namer(self, positions: Sequence[int]) -> Callable[[int], str]:
        """Image i of a batch of `positions` -> 'shard ..., key ...' (used where it is made, never pickled)."""
        return lambda i: self.reader.shards.where(self.reader.split, self.reader.index, int(positions[i]))


class EpochKeys(Sampler):
    """The DataLoader's keys: (the current epoch, batch number) for every batch of the epoch."""

    def __init__(self, batches: int):
        self.batches, self.epoch = batches, 0

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        return ((self.epoch, b) for b in range(self.batches))

    def __len__(self) -> int:
        return self.batches


class StreamBatches:
    """One split's batches, iterated like a DataLoader by the trainer; `set_epoch` picks the order."""

    def __init__(self, reader: BatchReader, run: RunConfig, device: torch.device, train: bool, batches: int,
                 workers: int, rank: int):
        self.reader, self.device, self.batches = reader, device, batches
        self.batch_size = reader.batch_size
        self.image_size, self.augment = run.data.image_size, run.data.augment and train
        self.generator = torch.Generator(device=device)  # augmentation: DataPipeline.set_epoch seeds it
        self.keys = EpochKeys(batches)
        # The workers' base seed is drawn when the persistent workers start: from the global
        # generator unless the loader has its own, which would shift dropout's draws in the epoch
        # they start (epoch 1, or the first epoch of a resumed run). The workers draw nothing random.
        seeds = torch.Generator().manual_seed(run.train.seed * 1_009 + rank)
        self.loader = DataLoader(reader, sampler=self.keys, batch_size=None, num_workers=workers, generator=seeds,
                                 persistent_workers=workers > 0, prefetch_factor=2 if workers else None,
                                 pin_memory=device.type == "cuda")

    def set_epoch(self, epoch: int) -> None:
        self.keys.epoch = epoch

    def __len__(self) -> int:
        return self.batches

    def _decoded(self, item) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.reader.decode_here:
            images, labels = item
            return images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        data, lengths, labels, positions = item
        images = decode_batch(list(torch.split(data, lengths.tolist())), self.reader.size, self.device,
                              self.reader.namer(positions.tolist()))
        return images, labels.to(self.device, non_blocking=True)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in map(self._decoded, self.loader):
            if self.augment:
                yield augment(images, self.image_size, self.generator), labels
            else:
                yield resize_and_normalise(images, self.image_size), labels


def resident_holder(device: torch.device, workers: int) -> Callable[[int], torch.Tensor]:
    """Where `compressed` keeps its bytes: pinned memory for a GPU, which copies batches from it
    (read in the training process: slicing memory needs no workers); shared memory where workers
    do not fork (forkserver, spawn: they would each receive a copy); else plain memory, which
    forked workers share."""
    if device.type == "cuda":
        return lambda size: torch.empty(size, dtype=torch.uint8, pin_memory=True)
    if workers and torch.multiprocessing.get_start_method() != "fork":
        return lambda size: torch.empty(size, dtype=torch.uint8).share_memory_()
    return lambda size: torch.empty(size, dtype=torch.uint8)


def build_stream_pipeline(run: RunConfig, shards: ShardSet, rank: int, world_size: int, device: torch.device,
                          resident: bool) -> DataPipeline:
    data, batch = run.data, per_device_batch(run)
    size = source_size(shards, data.image_size)
    decode_here = device.type != "cuda"  # a GPU decodes batches itself; CPU ranks decode in their workers
    workers = 0 if resident and device.type == "cuda" else data.num_workers
    train_sizes = [s.images for s in shards.splits["train"]]
    used = used_per_shard(train_sizes, data.limit_train or sum(train_sizes))
    test_total = sum(s.images for s in shards.splits["test"])
    test_count = min(test_total, data.limit_test or test_total)
    test_positions = rank_eval_positions(test_count, rank, world_size)
    orders = {"train": TrainOrder(used, run.train.seed, rank, world_size, data.shuffle_window),
              "test": EvalOrder(test_positions)}
    # What `compressed` holds: every used training image (each epoch deals them out anew), and
    # of the test split this rank's range only.
    held = {"train": range(int(used.sum())), "test": range(int(test_positions[0]), int(test_positions[-1]) + 1)
            if len(test_positions) else range(0)}
    readers = {}
    for split in ("train", "test"):
        reader = ShardReader(shards, split, shards.index(split), resident=held[split] if resident else range(0),
                             holder=resident_holder(device, workers))
        readers[split] = BatchReader(reader, batch, size, decode_here, orders[split])
    per_rank = train_images_per_rank(used, world_size)
    train = StreamBatches(readers["train"], run, device, True, train_batches(per_rank, batch), workers, rank)
    test = StreamBatches(readers["test"], run, device, False, -(-len(test_positions) // batch), workers, rank)
    # The training batches are their own sampler: DataPipeline.set_epoch sets their epoch.
    return DataPipeline(train, test, train, shards.classes, int(used.sum()), test_count, rank,
                        "compressed" if resident else "stream", digest=shards.digest)
