"""`hpcbench-data pack SRC OUT`: an image folder -> a shard set (the format: data/shards.py).

SRC holds `train/<class>/*` and `test/<class>/*` (or `val/<class>/*`, ImageNet's layout once its
validation images are sorted into class folders). JPEG files are copied byte for byte; other
formats, and every image when `--max-side` shrinks them, are encoded as JPEG at `--quality`.

Resumable: each shard is built in memory, checked (read back, counted), hashed, written to a
temporary file of its own (two packers into one OUT never share one), fsynced and renamed; then
its index sidecar and its info file, which records the images it holds, declare it finished. A
rerun after a kill keeps every shard whose info file names the same images at the same positions
(an image removed from the source since shifts every later one: those shards are written again)
and writes the rest. The manifest comes last, so a shard set without one is unfinished. Shards are
deterministic (fixed tar metadata): packing the same folder twice gives the same digest.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from hpcbench.cli import fail, one_line_errors
from hpcbench.data.shards import (
    FORMAT,
    MANIFEST,
    SPLITS,
    ShardIndex,
    ShardInfo,
    ShardSet,
    digest_of,
    sample_key,
    shard_name,
)
from hpcbench.data.sources import IMAGE_EXTENSIONS, ImageFolderSource, class_interleaved
from hpcbench.errors import DataError
from hpcbench.files import atomic_write_bytes, atomic_write_text
from hpcbench.progress import Progress

log = logging.getLogger("hpcbench")

SETTINGS_FILE = ".pack-settings.json"
JPEG_MAGIC = b"\xff\xd8\xff"
STORED_AS_IS = ("RGB", "L")  # JPEG colour modes every decoder reads; CMYK ones nvJPEG refuses are re-encoded
STALE_TEMPORARY_S = 3600  # a shard's temporary file this old was left by a pack that was killed


@dataclass(frozen=True)
class PackSettings:
    images_per_shard: int = 1000  # ImageNet-sized JPEGs: about 110 MB per shard
    max_side: Optional[int] = None  # shrink images whose longest side is larger (None: keep them)
    quality: int = 90  # JPEG quality of images that are (re-)encoded


@dataclass(frozen=True)
class ShardJob:
    out: str
    split: str
    number: int
    items: Tuple[Tuple[int, str, int], ...]  # (position in the split, source path, label)
    settings: PackSettings


def encoded_image(path: str, settings: PackSettings) -> Tuple[bytes, Tuple[int, int]]:
    """The JPEG bytes to store for one source image, and their (width, height)."""
    try:
        raw = Path(path).read_bytes()
        with Image.open(io.BytesIO(raw)) as image:
            size = image.size
            fits = settings.max_side is None or max(size) <= settings.max_side
            if raw.startswith(JPEG_MAGIC) and image.mode in STORED_AS_IS and fits:
                return raw, size
            image = image.convert("RGB")
            if settings.max_side is not None and max(size) > settings.max_side:
                image.thumbnail((settings.max_side, settings.max_side), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=settings.quality)
            return buffer.getvalue(), image.size
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(f"cannot read image {path}: {error}") from None


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: the same folder packs the same bytes
    tar.addfile(info, io.BytesIO(data))


def _sidecar(out: Path, split: str, number: int) -> Path:
    return out / (shard_name(split, number) + ".index.npz")


def _info_path(out: Path, split: str, number: int) -> Path:
    return out / (shard_name(split, number) + ".json")


def items_digest(job: ShardJob) -> str:
    """Which images a shard holds where: what a resumed pack compares before keeping the shard."""
    return hashlib.sha256(json.dumps([list(item) for item in job.items]).encode()).hexdigest()


def write_shard(job: ShardJob) -> ShardInfo:
    """Write, check and publish one shard; its index rows go to a sidecar beside it."""
    out, name = Path(job.out), shard_name(job.split, job.number)
    sizes, buffer = [], io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for position, path, label in job.items:
            data, size = encoded_image(path, job.settings)
            sizes.append(size)
            _add(tar, f"{sample_key(position)}.jpg", data)
            _add(tar, f"{sample_key(position)}.cls", str(label).encode())
    shard = buffer.getvalue()
    with tarfile.open(fileobj=io.BytesIO(shard)) as tar:  # read back: a valid tar with every sample in it
        images = {m.name: m for m in tar.getmembers() if m.name.endswith(".jpg")}
    if len(images) != len(job.items):
        raise DataError(f"shard {name} holds {len(images)} images after writing {len(job.items)}; pack it again")
    members = [images[f"{sample_key(position)}.jpg"] for position, _, _ in job.items]
    index = ShardIndex(shard=np.full(len(members), job.number), offset=np.array([m.offset_data for m in members]),
                       length=np.array([m.size for m in members]), label=np.array([item[2] for item in job.items]),
                       width=np.array([s[0] for s in sizes]), height=np.array([s[1] for s in sizes]))
    info = ShardInfo(name=name, images=len(members), bytes=len(shard), sha256=hashlib.sha256(shard).hexdigest())
    atomic_write_bytes(out / name, shard)  # a temporary file of its own, fsynced, renamed: then the info
    index.save(_sidecar(out, job.split, job.number))
    atomic_write_text(_info_path(out, job.split, job.number), json.dumps({**asdict(info), "items": items_digest(job)}))
    return info


def finished_shard(out: Path, job: ShardJob) -> Optional[ShardInfo]:
    """The shard's info if an earlier pack finished it with the images `job` puts there (tar,
    index and info agree), else None."""
    try:
        recorded = json.loads(_info_path(out, job.split, job.number).read_text())
        if recorded.pop("items", None) != items_digest(job):
            return None
        info = ShardInfo(**recorded)
        if (out / info.name).stat().st_size == info.bytes and _sidecar(out, job.split, job.number).is_file():
            return info
    except (OSError, ValueError, TypeError):
        pass
    return None


def remove_stale_temporaries(out: Path) -> None:
    """Temporary shard files a killed pack left (a recent one may be another packer's, at work)."""
    now = time.time()
    for temporary in (path for split in SPLITS for path in (out / split).glob(".shard-*.tmp")):
        try:
            if now - temporary.stat().st_mtime > STALE_TEMPORARY_S:
                temporary.unlink()
                log.info("pack: removed %s, left by a pack that did not finish", temporary)
        except FileNotFoundError:  # its packer finished it meanwhile
            pass


def _source(src: Path, split: str) -> ImageFolderSource:
    if split == "test" and not (src / "test").is_dir() and (src / "val").is_dir():
        split = "val"
    # ImageNet's validation images come as one flat folder; a stray file (a CSV of labels) is no image.
    if split == "val" and any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in (src / "val").iterdir()):
        raise DataError(f"{src / 'val'} holds images directly: sort them into class folders first "
                        f"(val/<class>/*.JPEG, as ImageNet's valprep.sh does)")
    return ImageFolderSource(src, split)


def plan_jobs(out: Path, sources: Dict[str, ImageFolderSource], settings: PackSettings) -> Iterator[ShardJob]:
    """Every shard of every split, images class-interleaved (the order `data.limit_*` takes)."""
    for split, source in sources.items():
        order = class_interleaved(source.labels)
        per = settings.images_per_shard
        for number, start in enumerate(range(0, len(order), per)):
            items = tuple((position, str(source.paths[i]), source.labels[i])
                          for position, i in enumerate(order[start:start + per], start=start))
            yield ShardJob(str(out), split, number, items, settings)


def _check_settings(out: Path, src: Path, settings: PackSettings) -> None:
    """A rerun continues only the same pack: same source, same settings."""
    wanted = {"source": str(src.resolve()), **asdict(settings)}
    path = out / SETTINGS_FILE
    if path.is_file():
        earlier = json.loads(path.read_text())
        if earlier != wanted:
            changed = ", ".join(f"{k} {earlier.get(k)!r} -> {v!r}" for k, v in wanted.items() if earlier.get(k) != v)
            raise DataError(f"{out} holds a pack with other settings ({changed}); use another OUT or delete it")
    elif (out / MANIFEST).is_file() or any(out.glob("*/shard-*.tar")):
        raise DataError(f"{out} already holds shards not packed by this command's settings; use another OUT")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(wanted, indent=1))


def pack(src: Path, out: Path, settings: PackSettings = PackSettings(), workers: int = 1) -> ShardSet:
    src, out = Path(src), Path(out)
    sources = {split: _source(src, split) for split in SPLITS}
    if sources["train"].classes != sources["test"].classes:
        raise DataError(f"{src}: train/ and test/ have different class folders; both need the same classes")
    _check_settings(out, src, settings)
    jobs = list(plan_jobs(out, sources, settings))
    infos: Dict[Tuple[str, int], ShardInfo] = {}
    todo: List[ShardJob] = []
    remove_stale_temporaries(out)
    for job in jobs:
        done = finished_shard(out, job)
        if done is not None:
            infos[(job.split, job.number)] = done
        else:
            todo.append(job)
    total = sum(len(job.items) for job in jobs)
    done_images = total - sum(len(job.items) for job in todo)
    if done_images:
        log.info("pack: %d of %d images already packed in %s; packing the rest", done_images, total, out)
    log.info("pack: %d shard(s) to write with %d worker process(es)", len(todo), min(workers, len(todo)) or 1)
    progress = Progress(f"pack {out.name}", total=total, unit="img", log=log)
    for job, info in zip(todo, _run(todo, workers), strict=True):
        infos[(job.split, job.number)] = info
        done_images += info.images
        progress.update(done_images, f"{done_images}/{total} images")
    progress.close()
    return _finish(out, sources, jobs, infos)


def _run(jobs: Sequence[ShardJob], workers: int) -> Iterator[ShardInfo]:
    if workers <= 1:
        yield from map(write_shard, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(write_shard, jobs)  # in order: the progress counts finished shards


def _finish(out: Path, sources: Dict[str, ImageFolderSource], jobs: Sequence[ShardJob],
            infos: Dict[Tuple[str, int], ShardInfo]) -> ShardSet:
    splits: Dict[str, List[ShardInfo]] = {split: [] for split in SPLITS}
    for job in jobs:
        splits[job.split].append(infos[(job.split, job.number)])
    sizes = set()
    for split in SPLITS:
        numbers = [job.number for job in jobs if job.split == split]
        index = ShardIndex.concatenate([ShardIndex.load(_sidecar(out, split, n)) for n in numbers])
        if len(index) != len(sources[split]):  # counts verified against the source folder
            raise DataError(f"{out}: {split} holds {len(index)} images, {len(sources[split])} in the source")
        index.save(out / f"{split}.index.npz")
        sizes |= set(zip(index.width.tolist(), index.height.tolist(), strict=True))
    manifest = {"format": FORMAT, "classes": sources["train"].classes,
                "splits": {split: [asdict(s) for s in shards] for split, shards in splits.items()},
                "image_size": list(sizes.pop()) if len(sizes) == 1 else None,
                "digest": digest_of(sources["train"].classes, splits), **json.loads((out / SETTINGS_FILE).read_text())}
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1))
    shard_set = ShardSet(out)
    log.info("packed %s: %d train + %d test images in %d shards, digest %s", out,
             len(sources["train"]), len(sources["test"]), sum(len(s) for s in splits.values()), shard_set.digest)
    return shard_set


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpcbench-data", description="Prepare data sets for hpcbench.")
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="turn an image folder into WebDataset shards (data=shards)")
    packing.add_argument("src", type=Path, help="folder with train/<class>/* and test/<class>/* (or val/<class>/*)")
    packing.add_argument("out", type=Path, help="the shard set to write (rerun to resume an interrupted pack)")
    defaults = PackSettings()
    packing.add_argument("--images-per-shard", type=int, default=defaults.images_per_shard)
    packing.add_argument("--max-side", type=int, default=defaults.max_side,
                         help="shrink images whose longest side is larger to this many pixels")
    packing.add_argument("--quality", type=int, default=defaults.quality, help="JPEG quality of re-encoded images")
    packing.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                         help="processes that write shards (default: the cores this job may use)")
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    args = _parser().parse_args(argv)
    if args.images_per_shard < 1 or not 1 <= args.quality <= 100 or (args.max_side is not None and args.max_side < 8):
        fail("hpcbench-data", "--images-per-shard must be >= 1, --quality 1-100, --max-side >= 8", 2)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with one_line_errors("hpcbench-data"):
        pack(args.src, args.out, PackSettings(args.images_per_shard, args.max_side, args.quality), args.workers)


if __name__ == "__main__":
    main()
