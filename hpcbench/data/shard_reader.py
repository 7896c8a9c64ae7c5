"""Reading a shard set (shards.py): the JPEG bytes of any image with one pread, under a bound on
open files, or from host memory for the images a run keeps resident; and a split as an
ImageSource, so that the tensor and PIL pipelines read shard sets too."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from hpcbench.data.open_files import OpenFiles, open_files_per_reader
from hpcbench.data.shards import ShardIndex, ShardSet
from hpcbench.data.sources import stack_same_size
from hpcbench.errors import DataError


class ShardReader:
    """Reads images' JPEG bytes of one split: from the shard files (one pread each, a bounded set of
    files open per process: open_files.py) or, for the positions in `resident`, from one block of
    host memory holding their bytes (read once; `holder` allocates it: shared memory for workers
    that do not fork, pinned memory for a GPU)."""

    def __init__(self, shards: ShardSet, split: str, index: ShardIndex, resident: range = range(0),
                 holder: Callable[[int], torch.Tensor] = lambda size: torch.empty(size, dtype=torch.uint8)):
        self.shards, self.split, self.index = shards, split, index
        self.files = OpenFiles([str(shards.root / s.name) for s in shards.splits[split]], open_files_per_reader())
        self.resident = resident
        self.memory: Optional[torch.Tensor] = None  # a tensor: shared memory pickles as a handle, not a copy
        if len(resident):
            self.memory, self.memory_offset = self._read_resident(holder)

    def _read_resident(self, holder: Callable[[int], torch.Tensor]) -> Tuple[torch.Tensor, np.ndarray]:
        """The resident images' bytes back to back (tar headers and labels left out): one read per shard."""
        positions = np.arange(self.resident.start, self.resident.stop)
        lengths = self.index.length[positions]
        memory = holder(int(lengths.sum()))
        view = memory.numpy()
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        shard_of = self.index.shard[positions]
        for number in np.unique(shard_of):
            in_shard = np.flatnonzero(shard_of == number)
            first, last = positions[in_shard[0]], positions[in_shard[-1]]
            span_start = int(self.index.offset[first])
            span = self._pread(int(number), int(self.index.offset[last] + self.index.length[last]) - span_start,
                               span_start, first)
            for i in in_shard:
                offset, length = int(self.index.offset[positions[i]]) - span_start, int(lengths[i])
                view[starts[i]:starts[i] + length] = np.frombuffer(span, np.uint8, length, offset)
        self.files.close()  # read once: workers forked later would hold them for the whole run
        return memory, starts

    def read(self, position: int) -> bytes:
        length = int(self.index.length[position])
        if position in self.resident:
            start = int(self.memory_offset[position - self.resident.start])
            return self.memory[start:start + length].numpy().tobytes()
        return self._pread(int(self.index.shard[position]), length, int(self.index.offset[position]), position)

    def _pread(self, number: int, length: int, offset: int, position: int) -> bytes:
        try:
            data = self.files.pread(number, length, offset)
        except OSError as error:  # gone, unreadable, a hung file system's EIO: name the shard, in one line
            raise DataError(f"cannot read shard {self.shards.splits[self.split][number].name} in {self.shards.root}: "
                            f"{error.strerror or error}; restore it or pack the data set again") from None
        if len(data) != length:
            raise DataError(f"{self.shards.where(self.split, self.index, position)} is cut short "
                            f"({len(data)} of {length} bytes); restore the shard or pack the data set again")
        return data


class ShardSource:
    """One split of a shard set as an ImageSource, so the tensor and PIL pipelines read shard sets
    too (and `data.pipeline=auto` can keep a small one decoded on the device)."""

    def __init__(self, shards: ShardSet, split: str):
        self.shards, self.split = shards, split
        self.index = shards.index(split)
        self.reader = ShardReader(shards, split, self.index)
        self.classes = shards.classes
        self.labels = self.index.label.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> Image.Image:
        try:
            with Image.open(io.BytesIO(self.reader.read(index))) as image:
                return image.convert("RGB")
        except (OSError, UnidentifiedImageError) as error:
            raise DataError(f"corrupt image in {self.shards.where(self.split, self.index, index)}: {error}") from None

    def decode(self, indices: Sequence[int]) -> np.ndarray:
        return stack_same_size([np.asarray(self.load(i)) for i in indices],
                               [self.shards.where(self.split, self.index, i) for i in indices])

    def cache_path(self, indices: Sequence[int], split: str) -> Optional[Path]:
        # None: a run never writes into a shard set (often on a read-only scratch file system), and
        # the shard sets the tensor pipeline holds decode fast (CIFAR-10's: 38,700 images/s per core).
        return None
