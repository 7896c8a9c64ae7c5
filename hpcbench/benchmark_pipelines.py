"""`python -m hpcbench.benchmark --pipelines`: every data pipeline feeding the same training step,
on ImageNet-like JPEGs generated here (mixed sizes around ImageNet's typical 500 x 375, photo-like
JPEG sizes) or an image folder such as CIFAR-10, packed into shard sets; with the per-core decode
rate of the stream pipeline's decoder and the host memory each pipeline adds.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import time
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tabulate import tabulate

from hpcbench.benchmark_recipes import (
    Bench,
    hardware,
    measure_interleaved,
    paired_ratio,
    paired_ratio_interval,
    recipes,
)
from hpcbench.data.pack import PackSettings, pack
from hpcbench.data.shard_reader import ShardReader
from hpcbench.data.shards import MANIFEST, ShardSet
from hpcbench.data.stream_pipeline import decode_batch, source_size
from hpcbench.data.transforms import eval_transform
from hpcbench.mpi.topology import Topology

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
    reader = ShardReader(shard_set, "train", shard_set.index("train"), resident=range(count))
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


def resident_mb() -> float:
    """This process's resident memory now (VmRSS), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def compare_pipelines(args: argparse.Namespace, device: torch.device, topology: Topology, say: Callable) -> Dict:
    """--pipelines: every pipeline feeding the same step, per data set, with the decoder's per-core rate."""
    results: Dict = {"date": date.today().isoformat(), "hardware": hardware(device), "torch": torch.__version__,
                     "model": args.model, "image_size": args.image_size, "batch_per_rank": args.batch,
                     "ranks": topology.world_size, "data": {}}
    for kind in args.bench_data.split(","):
        data = prepare(kind, Path(args.work_dir), args.bench_images, args.image_size,
                       Path(args.data_root) if args.data_root else None)
        benches, added = [], {}
        for recipe in recipes(device, args):
            before = resident_mb()
            shards = data.resident_shards if recipe.pipeline == "tensor" else data.shards
            benches.append(Bench(replace(recipe, shards=str(shards)), args, device, topology))
            added[recipe.name] = resident_mb() - before
        rates = measure_interleaved(benches, args.repeats, say)
        medians = {name: statistics.median(values) for name, values in rates.items()}
        decode = decode_rates(data.shards, args.image_size)
        results["data"][kind] = {"rates": rates, "medians": medians, "host_mb_added": added, **decode}
        say(f"\n{kind}: {args.model} at {args.image_size} px, batch {args.batch} x {topology.world_size} rank(s), "
            f"on {results['hardware']}; torch {torch.__version__}")
        say(tabulate([[name, f"{medians[name]:.1f}", _share(rates, name, "decoded"), _share(rates, name, "step"),
                       f"{added[name]:.0f}", ", ".join(f"{v:.1f}" for v in values)] for name, values in rates.items()],
                     headers=["recipe", "median img/s", "of decoded, paired [95% interval]", "of step",
                              "host MiB added", "runs"], tablefmt="github"))
        say(f"decode per core: {decode['stream_decode_per_core']:.0f} img/s (stream: libjpeg-turbo + resize), "
            f"{decode['pil_decode_per_core']:.0f} img/s (PIL decode + Resize)")
    if args.json and topology.is_main:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


def _share(rates: Dict[str, List[float]], name: str, of: str) -> str:
    """The ratio from the repeats' pairs and its 95% interval (the spread between repeats on a busy
    2-core machine is often wider than the difference between pipelines)."""
    if of not in rates:
        return ""
    if name == of or len(rates[name]) < 2:
        return f"{statistics.median(rates[name]) / statistics.median(rates[of]) * 100:.1f}%"
    low, high = paired_ratio_interval(rates[name], rates[of])
    return f"{paired_ratio(rates[name], rates[of]) * 100:.1f}% [{low * 100:.0f}-{high * 100:.0f}%]"
