"""Image sources: a split of a data set as indexable (uint8 HxWx3 image, label) pairs.

Every source exposes the same small interface, so subsetting, pipelines and serving never
care where images come from: `labels`, `classes`, `load(i) -> PIL.Image` for the PIL pipeline,
`decode(indices) -> uint8 array` for the tensor pipeline, and `cache_path(...)` where decoding is
worth caching on disk.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Protocol, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from hpcbench.config import DataConfig
from hpcbench.errors import DataError

CACHE_DIR = ".hpcbench-cache"  # beside an image folder's train/ and test/

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class ImageSource(Protocol):
    classes: List[str]
    labels: List[int]

    def __len__(self) -> int: ...

    def load(self, index: int) -> Image.Image: ...

    def decode(self, indices: Sequence[int]) -> np.ndarray:
        """The images at `indices` as one (N, H, W, 3) uint8 array (all of one size)."""
        ...

    def cache_path(self, indices: Sequence[int], split: str) -> Optional[Path]:
        """Where `decode(indices)` may be cached, or None when decoding is cheaper than reading a cache."""
        ...


class MixedImageSizes(DataError):
    """Images of several sizes: the tensor pipeline cannot hold them (data.pipeline=auto then uses pil)."""


def stack_same_size(arrays: List[np.ndarray], names: Sequence[object]) -> np.ndarray:
    """One (N, H, W, 3) array; images of different sizes cannot share one tensor."""
    for array, name in zip(arrays, names, strict=True):
        if array.shape != arrays[0].shape:
            raise MixedImageSizes(
                f"the tensor pipeline needs images of one size: {name} is {array.shape[1]}x{array.shape[0]}, "
                f"others {arrays[0].shape[1]}x{arrays[0].shape[0]}; use data.pipeline=pil"
            )
    return np.stack(arrays)


def class_interleaved(labels: Sequence[int]) -> List[int]:
    """Every index, taken round-robin over classes, each class in its own order.

    Sorted folders list every cat before any dog; interleaved, every prefix is class-balanced."""
    per_class: dict[int, List[int]] = {}
    for index, label in enumerate(labels):
        per_class.setdefault(label, []).append(index)
    queues = [per_class[c] for c in sorted(per_class)]
    return [queue[depth] for depth in range(max((len(q) for q in queues), default=0))
            for queue in queues if depth < len(queue)]


def balanced_first_n(labels: Sequence[int], n: Optional[int]) -> List[int]:
    """Indices of the first `n` items taken round-robin over classes (class-balanced), or all
    indices in their own order when `n` is None or covers them all."""
    if n is None or n >= len(labels):
        return list(range(len(labels)))
    return class_interleaved(labels)[:n]


# --- synthetic --------------------------------------------------------------------------------

@dataclass
class SyntheticSource:
    """CIFAR-shaped images generated from a seed: each class is a smooth random colour pattern;
    samples are that pattern shifted, re-contrasted and noised. Learnable, yet not trivially so.
    Image i is a pure function of (seed, split, i), so any subset is generated without the rest."""

    seed: int
    split: str
    size: int
    num_classes: int = 10
    image_size: int = 32

    def __post_init__(self) -> None:
        self.classes = CIFAR10_CLASSES[: self.num_classes]
        self.labels = [i % self.num_classes for i in range(self.size)]
        self._prototypes = self._make_prototypes()

    def _make_prototypes(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 7919])  # shared by both splits: same classes
        coarse = rng.uniform(0, 255, size=(self.num_classes, 4, 4, 3))
        factor = self.image_size // 4
        return np.repeat(np.repeat(coarse, factor, axis=1), factor, axis=2)

    def __len__(self) -> int:
        return self.size

    def array(self, index: int) -> np.ndarray:
        split_code = 0 if self.split == "train" else 1
        rng = np.random.default_rng([self.seed, split_code, index])
        image = np.roll(self._prototypes[self.labels[index]], rng.integers(-6, 7, size=2), axis=(0, 1))
        colour_cast = rng.normal(0, 20, size=3)
        image = (image - 128.0) * rng.uniform(0.5, 1.1) + 128.0 + colour_cast + rng.normal(0, 50, image.shape)
        return np.clip(image, 0, 255).astype(np.uint8)

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.array(index))

    def decode(self, indices: Sequence[int]) -> np.ndarray:
        return np.stack([self.array(i) for i in indices])

    def cache_path(self, indices: Sequence[int], split: str) -> Optional[Path]:
        return None  # generating is as fast as reading


# --- an ImageFolder tree (train/<class>/*.jpg, test/<class>/*.jpg) ---------------------------

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageFolderSource:
    def __init__(self, root: Path, split: str):
        self.root = root
        split_dir = root / split
        if not split_dir.is_dir():
            raise DataError(
                f"image folder {split_dir} does not exist: data.root must hold train/ and test/ "
                f"class folders (e.g. tar -xzf cifar10-jpeg.tar.gz -C data/)"
            )
        class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir())
        if not class_dirs:
            raise DataError(f"image folder {split_dir} has no class folders")
        self.classes = [p.name for p in class_dirs]
        self.paths: List[Path] = []
        self.labels = []
        for label, class_dir in enumerate(class_dirs):
            files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise DataError(f"class folder {class_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            self.paths += files
            self.labels += [label] * len(files)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Image.Image:
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, UnidentifiedImageError) as error:
            raise DataError(f"cannot read image {path}: {error}") from error

    def decode(self, indices: Sequence[int]) -> np.ndarray:
        return stack_same_size([np.asarray(self.load(i)) for i in indices], [self.paths[i] for i in indices])

    def cache_path(self, indices: Sequence[int], split: str) -> Optional[Path]:
        """Keyed by the files' names, sizes and modification times: a changed file is decoded again."""
        digest = hashlib.sha1()
        for index in indices:
            path = self.paths[index]
            stat = path.stat()
            digest.update(f"{path.relative_to(self.root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        return self.root / CACHE_DIR / f"{split}-{len(indices)}-{digest.hexdigest()[:16]}.pt"


# --- torchvision's CIFAR10 (the official python archive) ----------------------------------------

class Cifar10Source:
    def __init__(self, root: Path, split: str, download: bool):
        import torchvision

        train = split == "train"
        try:
            dataset = torchvision.datasets.CIFAR10(str(root), train=train, download=False)
        except RuntimeError:
            if not download:
                raise DataError(self._missing_message(root, "data.download=false")) from None
            try:
                dataset = torchvision.datasets.CIFAR10(str(root), train=train, download=True)
            except Exception as error:  # URLError, socket errors: the machine is offline
                raise DataError(self._missing_message(root, f"download failed: {error}")) from None
        self.classes = list(dataset.classes)
        self.labels = list(dataset.targets)
        self.arrays = dataset.data  # (N, 32, 32, 3) uint8

    @staticmethod
    def _missing_message(root: Path, why: str) -> str:
        return (
            f"CIFAR-10 is not in {root} ({why}); stage it on a machine with internet: "
            f"python -c \"import torchvision; torchvision.datasets.CIFAR10('{root}', download=True)\" "
            f"and copy the folder here, or use data=image_folder with the JPEG tree"
        )

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.arrays[index])

    def decode(self, indices: Sequence[int]) -> np.ndarray:
        return self.arrays[list(indices)]

    def cache_path(self, indices: Sequence[int], split: str) -> Optional[Path]:
        return None  # already one array in memory


def open_source(data: DataConfig, split: str) -> ImageSource:
    """The `split` ("train" or "test") of the built-in data set `data` names."""
    if data.name == "synthetic":
        size = data.synthetic_train_size if split == "train" else data.synthetic_test_size
        return SyntheticSource(seed=data.synthetic_seed, split=split, size=size)
    if data.root is None:
        raise DataError(f"data={data.name} needs data.root")
    if data.name == "image_folder":
        return ImageFolderSource(Path(data.root), split)
    return Cifar10Source(Path(data.root), split, data.download)
