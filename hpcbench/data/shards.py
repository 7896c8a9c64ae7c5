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
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

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
