"""The data sets of `python -m hpcbench.benchmark --pipelines`: ImageNet-like JPEGs generated here
(mixed sizes around ImageNet's typical 500 x 375, photo-like JPEG sizes) or an image folder such as
CIFAR-10, packed into shard sets; and the per-core decode rate of the stream pipeline's decoder.
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from hpcbench.data.pack import PackSettings, pack
from hpcbench.data.shards import MANIFEST, ShardReader, ShardSet
from hpcbench.data.stream_pipeline import decode_batch, source_size
from hpcbench.data.transforms import eval_transform

IMAGENET_LIKE_CLASSES = 10


@dataclass(frozen=True)
class BenchData:
    name: str
    shards: Path  # what pil, stream and compressed read
    resident_shards: Path  # what the decoded-resident recipe holds: the same images, of one size


def imagenet_like_folder(root: Path, count: int, seed: int = 0) -> Path:
    """`count` JPEGs (quality 90) of 400-600 x 300-450 px: smooth colour fields with texture,
    about 60-120 KB each like ImageNet's photos, spread over 10 class folders."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        split = "test" if (i // IMAGENET_LIKE_CLASSES) % 8 == 0 else "train"  # 1 in 8, every class
        path = root / split / f"class{i % IMAGENET_LIKE_CLASSES}" / f"{i:06d}.jpg"
        if path.exists():
            continue
        width, height = int(rng.integers(400, 601)), int(rng.integers(300, 451))
        coarse = torch.from_numpy(rng.uniform(0, 255, (1, 3, 12, 16))).float()
        field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0]
        texture = torch.from_numpy(rng.normal(0, 18, (3, height, width))).float()
        pixels = (field + texture).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
    return root


def _packed(folder: Path, out: Path, max_side: Optional[int]) -> Path:
    if not (out / MANIFEST).is_file():
        pack(folder, out, PackSettings(images_per_shard=500, max_side=max_side))
    return out


def prepare(kind: str, work_dir: Path, images: int, image_size: int, folder: Optional[Path] = None) -> BenchData:
    """Shard sets for one benchmark data set, made once in `work_dir` and reused."""
    work_dir = Path(work_dir)
    if kind == "imagenet-like":
        folder = imagenet_like_folder(work_dir / f"imagenet-like-{images}", images)
    elif folder is None:
        raise ValueError(f"--bench-data {kind} needs --data-root (an image folder)")
    name = f"{kind}-{images}" if kind == "imagenet-like" else kind
    shards = _packed(folder, work_dir / f"{name}-shards", None)
    uniform = ShardSet(shards).image_size is not None
    # Decoded-resident needs one size: the same images pre-resized to the training size.
    resident = shards if uniform else _resized_copy(shards, work_dir / f"{name}-{image_size}px", image_size)
    return BenchData(kind, shards, resident)


def _resized_copy(shards: Path, folder: Path, size: int) -> Path:
    shard_set = ShardSet(shards)
    for split in ("train", "test"):
        reader = ShardReader(shard_set, split, shard_set.index(split))
        for position in range(len(reader.index)):
            path = folder / "folder" / split / f"class{reader.index.label[position]}" / f"{position:07d}.jpg"
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            jpeg = torch.frombuffer(bytearray(reader.read(position)), dtype=torch.uint8)
            image = decode_batch([jpeg], (size, size), torch.device("cpu"))[0]
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(path, quality=95)
    return _packed(folder / "folder", folder / "shards", None)


def decode_rates(shards: Path, image_size: int, images: int = 256) -> Dict[str, float]:
    """Images per second of one core: the stream's decode (torchvision / libjpeg-turbo, resize to the
    source size) and PIL's decode + Resize (the original pipeline's first step)."""
    shard_set = ShardSet(shards)
    count = min(images, sum(s.images for s in shard_set.splits["train"]))
    reader = ShardReader(shard_set, "train", shard_set.index("train"), resident_images=count)
    jpegs = [torch.frombuffer(bytearray(reader.read(p)), dtype=torch.uint8) for p in range(count)]
    size = source_size(shard_set, image_size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        started = time.perf_counter()
        for start in range(0, count, 32):
            decode_batch(jpegs[start:start + 32], size, torch.device("cpu"))
        stream_rate = count / (time.perf_counter() - started)
        transform = eval_transform(image_size)
        started = time.perf_counter()
        for jpeg in jpegs:
            with Image.open(io.BytesIO(jpeg.numpy().tobytes())) as image:
                transform(image.convert("RGB"))
        pil_rate = count / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    return {"stream_decode_per_core": stream_rate, "pil_decode_per_core": pil_rate}

