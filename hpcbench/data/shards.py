"""A shard set: a data set as WebDataset tar shards of compressed images, written by
`hpcbench-data pack` (data/pack.py) and read by the stream pipeline (data/stream_pipeline.py).

Layout of a shard set directory:

    manifest.json            classes, per split its shards (name, images, bytes, sha256), the
                             images' common size (or null), the packing settings and the digest
    train/shard-000000.tar   WebDataset samples: <key>.jpg (JPEG bytes) + <key>.cls (label text)
    train.index.npz          per image: shard, byte offset and length of its .jpg in the shard,
                             label, width, height (so a rank reads any image with one pread)
    test/..., test.index.npz

Why WebDataset tar: a tar is read by any language and `tar`, streams sequentially from any file
system, and WebDataset (and litdata's, DALI's readers) read it as is; the index beside it gives
litdata's random access without a format of our own. The images are stored class-interleaved
(`balanced_first_n` order), so the first N of a split are the same N images `data.limit_train=N`
takes from the folder they were packed from, and every shard holds every class.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from hpcbench.data.sources import CACHE_DIR, stack_same_size
from hpcbench.errors import DataError
from hpcbench.files import atomic_write_bytes

MANIFEST = "manifest.json"
FORMAT = "hpcbench-shards/1: WebDataset tar, <key>.jpg + <key>.cls; <split>.index.npz"
SPLITS = ("train", "test")
INDEX_FIELDS = ("shard", "offset", "length", "label", "width", "height")


def shard_name(split: str, number: int) -> str:
    return f"{split}/shard-{number:06d}.tar"


def sample_key(position: int) -> str:
    """The WebDataset key of the image at `position` of its split (keys must hold no dot)."""
    return f"{position:08d}"


@dataclass(frozen=True)
class ShardInfo:
    name: str  # relative to the shard set, e.g. train/shard-000003.tar
    images: int
    bytes: int
    sha256: str


def digest_of(classes: Sequence[str], splits: Dict[str, List[ShardInfo]]) -> str:
    """The shard set's identity: its classes and every shard's content hash."""
    hasher = hashlib.sha256(json.dumps(list(classes)).encode())
    for split in sorted(splits):
        for shard in splits[split]:
            hasher.update(f"{shard.name}|{shard.images}|{shard.sha256}\n".encode())
    return hasher.hexdigest()[:16]


@dataclass
class ShardIndex:
    """Where each image of a split lies: numpy columns, one row per image, in split order."""

    shard: np.ndarray
    offset: np.ndarray
    length: np.ndarray
    label: np.ndarray
    width: np.ndarray
    height: np.ndarray

    def __len__(self) -> int:
        return len(self.label)

    def save(self, path: Path) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **{name: getattr(self, name) for name in INDEX_FIELDS})
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> "ShardIndex":
        with np.load(path) as columns:
            return cls(**{name: columns[name].astype(np.int64) for name in INDEX_FIELDS})

    @classmethod
    def concatenate(cls, parts: Sequence["ShardIndex"]) -> "ShardIndex":
        return cls(**{name: np.concatenate([getattr(p, name) for p in parts]).astype(np.int64)
                      for name in INDEX_FIELDS})


class ShardSet:
    """An opened shard set, checked: every shard the manifest lists is there with its size."""

    def __init__(self, root: Path):
        self.root = Path(root)
        manifest_path = self.root / MANIFEST
        if not manifest_path.is_file():
            partial = (self.root / "train").is_dir()
            raise DataError(f"{self.root} is not a shard set (no {MANIFEST})"
                            + ("; packing did not finish: run the same hpcbench-data pack again to complete it"
                               if partial else "; make one with: hpcbench-data pack IMAGE_FOLDER " + str(self.root)))
        try:
            manifest = json.loads(manifest_path.read_text())
            self.classes: List[str] = manifest["classes"]
            self.splits = {split: [ShardInfo(**s) for s in manifest["splits"][split]] for split in SPLITS}
            self.digest: str = manifest["digest"]
            size = manifest.get("image_size")
            self.image_size: Optional[Tuple[int, int]] = tuple(size) if size else None  # (width, height) of all
        except (ValueError, KeyError, TypeError) as error:
            raise DataError(f"{manifest_path} is not a manifest of hpcbench-data pack ({error!r})") from None
        for shard in (s for split in SPLITS for s in self.splits[split]):
            self.check_shard(shard)
        self._indexes: Dict[str, ShardIndex] = {}

    def check_shard(self, shard: ShardInfo) -> None:
        path = self.root / shard.name
        if not path.is_file():
            raise DataError(f"shard {shard.name} is missing from {self.root} (the manifest lists it with "
                            f"{shard.images} images); restore it or pack the data set again")
        size = path.stat().st_size
        if size == 0 or size != shard.bytes:
            raise DataError(f"shard {shard.name} in {self.root} is {'empty' if size == 0 else 'damaged'} "
                            f"({size} bytes, the manifest says {shard.bytes}); restore it or pack the data set again")

    def index(self, split: str) -> ShardIndex:
        """The split's index, read once (the sources and the stream pipeline share it)."""
        if split not in self._indexes:
            path = self.root / f"{split}.index.npz"
            try:
                self._indexes[split] = ShardIndex.load(path)
            except (OSError, ValueError, KeyError) as error:
                raise DataError(f"cannot read the index {path} ({error}); pack the data set again") from None
        return self._indexes[split]

    def where(self, split: str, index: ShardIndex, position: int) -> str:
        """'shard train/shard-000003.tar, key 00003017': how errors name an image."""
        return f"shard {self.splits[split][index.shard[position]].name}, key {sample_key(position)}"


def read_manifest_digest(root: Path) -> Optional[str]:
    """The digest of the shard set at `root`, or None where there is none (cheap: one small file)."""
    try:
        return json.loads((Path(root) / MANIFEST).read_text())["digest"]
    except (OSError, ValueError, KeyError):
        return None


class ShardReader:
    """Reads images' JPEG bytes of one split: from the shard files (one pread each, the files
    kept open per process) or, for the first `resident_images` of the split, from one host array
    holding their bytes."""

    def __init__(self, shards: ShardSet, split: str, index: ShardIndex, resident_images: int = 0):
        self.shards, self.split, self.index = shards, split, index
        self.paths = [str(shards.root / s.name) for s in shards.splits[split]]
        self._files: Dict[int, int] = {}  # shard number -> file descriptor, opened on first read
        self.memory: Optional[np.ndarray] = None
        self.resident_images = resident_images
        if resident_images:
            self.memory, self.memory_offset = self._read_resident()

    def _read_resident(self) -> Tuple[np.ndarray, np.ndarray]:
        """The resident images' bytes back to back (tar headers and labels left out): one read per shard."""
        lengths = self.index.length[:self.resident_images]
        memory = np.empty(int(lengths.sum()), dtype=np.uint8)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        for number, path in enumerate(self.paths):
            in_shard = np.flatnonzero(self.index.shard[:self.resident_images] == number)
            if len(in_shard) == 0:
                continue
            shard_bytes = np.fromfile(path, dtype=np.uint8)
            for position in in_shard:
                offset, length = self.index.offset[position], lengths[position]
                memory[starts[position]:starts[position] + length] = shard_bytes[offset:offset + length]
        return memory, starts

    def read(self, position: int) -> bytes:
        length = int(self.index.length[position])
        if position < self.resident_images:
            start = int(self.memory_offset[position])
            return self.memory[start:start + length].tobytes()
        number = int(self.index.shard[position])
        if number not in self._files:
            self._files[number] = os.open(self.paths[number], os.O_RDONLY)
        # pread: no shared file position, so forked DataLoader workers may share the descriptors
        data = os.pread(self._files[number], length, int(self.index.offset[position]))
        if len(data) != length:
            raise DataError(f"{self.shards.where(self.split, self.index, position)} is cut short "
                            f"({len(data)} of {length} bytes); restore the shard or pack the data set again")
        return data

    def __getstate__(self):  # a process that receives a pickled reader opens its own files
        return {**self.__dict__, "_files": {}}


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
        chosen = hashlib.sha1(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:12]
        return self.shards.root / CACHE_DIR / f"{split}-{len(indices)}-{self.shards.digest}-{chosen}.pt"
