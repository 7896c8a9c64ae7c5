"""Data sets larger than memory: the stream and compressed pipelines that read shard sets
(hpcbench-data pack: test_pack.py), the epoch order over ranks, and their errors."""
from __future__ import annotations

import hashlib
import io
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    TINY,
    compose_run,
    mixed_size_folder,
    read_json,
    read_metrics,
    run_cli,
    synthetic_shards,
    write_image_folder,
)
from PIL import Image

from hpcbench.data.choice import judge
from hpcbench.data.eval_preprocess import eval_preprocess
from hpcbench.data.pack import PackSettings, pack
from hpcbench.data.pipeline import build_pipeline, open_sources
from hpcbench.data.shard_reader import ShardSource
from hpcbench.data.shards import MANIFEST, ShardSet
from hpcbench.data.stream_order import rank_eval_positions, rank_train_order, used_per_shard
from hpcbench.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from hpcbench.errors import DataError
from hpcbench.training.continuation import CheckpointError
from hpcbench.training.trainer import fit

CPU = torch.device("cpu")
STREAM = ["data=shards", "data.image_size=32", "data.num_workers=0", "batch_size=per_device_32", "train.probe=false"]
TINY_STREAM = [*TINY, "data=shards"]  # for the command line: TINY already sets what STREAM adds


# --- the epoch order -------------------------------------------------------------------------

@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_each_epoch_gives_every_image_to_one_rank_once_but_fewer_than_the_ranks(world_size):
    used = used_per_shard([32, 32, 32, 17], limit=100)  # the limit cuts the last shard to 4
    assert used.tolist() == [32, 32, 32, 4]
    orders = {}
    for epoch in (0, 1):
        ranks = [rank_train_order(used, seed=7, epoch=epoch, rank=r, world_size=world_size, window=16)
                 for r in range(world_size)]
        everything = np.concatenate(ranks)
        assert len(set(everything.tolist())) == len(everything)  # no image twice, no image on two ranks
        assert {len(r) for r in ranks} == {100 // world_size}  # every rank trains as many steps
        assert set(everything.tolist()) <= set(range(100)) and 100 - len(everything) < world_size  # the drop rule
        orders[epoch] = ranks
        # A resumed run computes the same order from (seed, epoch, rank) alone.
        assert all(np.array_equal(rank_train_order(used, 7, epoch, r, world_size, 16), ranks[r])
                   for r in range(world_size))
    assert not np.array_equal(orders[0][0], orders[1][0])  # reshuffled every epoch
    evaluation = [rank_eval_positions(50, r, world_size) for r in range(world_size)]
    assert sorted(np.concatenate(evaluation).tolist()) == list(range(50))


# --- reading -----------------------------------------------------------------------------------

STEP = 16  # position-coded colours: channel values 8, 24, ..., 248 survive JPEG's rounding


def _position_coded_shards(root: Path, train: int, test: int) -> Path:
    """Image i of a split is one flat colour that spells i, so a decoded batch says which images it holds."""
    def coded(i: int) -> np.ndarray:
        colour = [(i % STEP) * STEP + 8, (i // STEP % STEP) * STEP + 8, (i // STEP**2) * STEP + 8]
        return np.tile(np.array(colour, dtype=np.uint8), (32, 32, 1))

    folder = write_image_folder(root / "folder", {split: [(coded(i), i % 4) for i in range(count)]
                                                  for split, count in (("train", train), ("test", test))})
    # Image i is in class folder i % 4: packing interleaves the classes, so position i holds image i.
    pack(folder, root / "shards", PackSettings(images_per_shard=24))
    return root / "shards"


def _positions(images: torch.Tensor) -> list[int]:
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    pixels = ((images[:, :, 16, 16].unsqueeze(-1).unsqueeze(-1) * std + mean) * 255).squeeze(-1).squeeze(-1)
    digits = ((pixels - 8) / STEP).round().long()
    return (digits[:, 0] + digits[:, 1] * STEP + digits[:, 2] * STEP**2).tolist()


def test_two_ranks_stream_every_image_once_per_epoch_and_compressed_reads_the_same(tmp_path):
    shards = _position_coded_shards(tmp_path, train=200, test=40)
    runs = {kind: compose_run([*STREAM, f"data.root={shards}", f"data.pipeline={kind}", "data.augment=false",
                               "mode=ddp", "mode.ranks=2", "data.shuffle_window=30"]) for kind in ("stream", "compressed")}
    seen: dict[str, dict[int, list[list[int]]]] = {}
    for kind, run in runs.items():
        for rank in (0, 1):
            if kind == "compressed" and rank == 1:
                run.data.num_workers = 1  # the same batches from a worker process
            pipeline = build_pipeline(run, rank, 2, CPU)
            assert pipeline.kind == kind and len(pipeline.train_loader) == 4  # 100 images per rank, batch 32
            for epoch in (0, 1):
                pipeline.set_epoch(epoch, run.train.seed)
                batches = [_positions(images) for images, _ in pipeline.train_loader]
                seen.setdefault(kind, {}).setdefault(epoch, []).append(sum(batches, []))
            test = sum((_positions(images) for images, _ in pipeline.test_loader), [])
            assert test == list(range(20 * rank, 20 * rank + 20))  # every test image once, in order
    for epoch in (0, 1):
        rank0, rank1 = seen["stream"][epoch]
        assert len(rank0) == len(rank1) == 100 and set(rank0).isdisjoint(rank1)
        assert set(rank0 + rank1) == set(range(200))  # every image, once
        assert seen["compressed"][epoch] == seen["stream"][epoch]
    assert seen["stream"][0] != seen["stream"][1]


def test_the_gpus_path_decoding_whole_batches_in_the_main_process_gives_the_same_batches(tmp_path):
    """On a GPU the workers only read bytes and the training process decodes each batch with one
    decode_jpeg call on its device: here that path runs on the CPU and must match the workers'."""
    shards = pack(mixed_size_folder(tmp_path / "folder"), tmp_path / "shards", PackSettings(images_per_shard=8))
    run = compose_run([*STREAM, f"data.root={shards.root}", "data.pipeline=stream", "batch_size.size=8"])
    batches = {}
    for decode_here in (True, False):
        pipeline = build_pipeline(run, 0, 1, CPU)
        pipeline.train_loader.reader.decode_here = decode_here
        pipeline.test_loader.reader.decode_here = decode_here
        pipeline.set_epoch(3, run.train.seed)
        random.seed(3)  # the colour operations' order (the trainer seeds it per epoch)
        batches[decode_here] = [(images, labels) for loader in (pipeline.train_loader, pipeline.test_loader)
                                for images, labels in loader]
    assert len(batches[True]) == len(batches[False]) == 4 + 2
    for (a, la), (b, lb) in zip(batches[True], batches[False], strict=True):
        assert torch.equal(la, lb) and torch.allclose(a, b, atol=1e-6)


def test_stream_and_tensor_pipelines_feed_the_same_evaluation_pixels(tmp_path):
    shards = synthetic_shards(tmp_path, train=64, test=64)
    pixels = {}
    for kind in ("tensor", "stream"):
        pipeline = build_pipeline(compose_run([*STREAM, f"data.root={shards}", f"data.pipeline={kind}"]), 0, 1, CPU)
        pixels[kind] = torch.cat([images for images, _ in pipeline.test_loader])
        assert pipeline.digest == ShardSet(shards).digest
    # PIL and torchvision both decode with libjpeg-turbo: the same pixels.
    assert torch.equal(pixels["tensor"], pixels["stream"])


def test_serving_preprocesses_an_image_as_the_streams_evaluation_did(tmp_path):
    shards = pack(mixed_size_folder(tmp_path / "folder"), tmp_path / "shards", PackSettings(images_per_shard=8))
    pipeline = build_pipeline(compose_run([*STREAM, f"data.root={shards.root}", "data.pipeline=stream"]), 0, 1, CPU)
    evaluated = torch.cat([images for images, _ in pipeline.test_loader])
    source = ShardSource(shards, "test")
    served = torch.stack([eval_preprocess("stream", 32)(source.load(i)) for i in range(len(source))])
    assert torch.equal(served, evaluated)


def test_auto_chooses_by_the_memory_budget(tmp_path):
    shards = synthetic_shards(tmp_path, train=64, test=32)
    jpeg_bytes = sum(int(ShardSet(shards).index(split).length.sum()) for split in ("train", "test"))

    def choice(*overrides: str) -> str:
        run = compose_run([*STREAM, f"data.root={shards}", *overrides])
        return judge(run, *open_sources(run.data), CPU).kind

    assert choice() == "tensor"
    decoded_mb = 96 * 32 * 32 * 3 / 2**20
    assert choice(f"data.memory_budget_mb={decoded_mb * 2}") == "compressed"  # building needs 3 copies
    assert choice(f"data.memory_budget_mb={jpeg_bytes / 2**20 * 1.5}") == "compressed"
    assert choice(f"data.memory_budget_mb={jpeg_bytes / 2**20 * 1.5}", "mode=ddp", "mode.ranks=2") == "stream"
    assert choice(f"data.memory_budget_mb={jpeg_bytes / 2**20 / 2}") == "stream"


# --- bounded memory ------------------------------------------------------------------------------

PEAK_RSS = """
import resource, sys, torch
sys.path.insert(0, {tests!r})
from helpers import compose_run
from hpcbench.data.pipeline import build_pipeline
for root in sys.argv[1:]:
    run = compose_run(["data=shards", f"data.root={{root}}", "data.pipeline=stream", "data.image_size=160",
                       "data.num_workers=0", "batch_size=per_device_32", "data.augment=false"])
    pipeline = build_pipeline(run, 0, 1, torch.device("cpu"))
    pipeline.set_epoch(0, 42)
    count = sum(len(labels) for _, labels in pipeline.train_loader)
    print(count, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def _large_images(root: Path, count: int) -> Path:
    rng = np.random.default_rng(1)
    coarse = rng.integers(0, 255, (count, 5, 5, 3)).astype(np.uint8)
    images = [(np.kron(c, np.ones((32, 32, 1), dtype=np.uint8)), i % 2) for i, c in enumerate(coarse)]
    write_image_folder(root / "folder", {"train": images, "test": images[:8]})
    pack(root / "folder", root / "shards", PackSettings(images_per_shard=250))
    return root / "shards"


def test_the_streams_peak_memory_does_not_grow_with_the_data_set(tmp_path):
    """Peak RSS of one process after an epoch of 400 160-px images, then after an epoch of 1,600
    (73 KiB each decoded: 88 MiB more): the stream holds a batch at a time, whatever the data set's
    size, so the second epoch does not raise the peak by more than noise."""
    roots = [_large_images(tmp_path / str(count), count) for count in (400, 1600)]
    out = subprocess.run([sys.executable, "-c", PEAK_RSS.format(tests=str(Path(__file__).parent)), *map(str, roots)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (small, small_peak), (large, large_peak) = [(int(c), float(p)) for c, p in map(str.split, out.stdout.splitlines())]
    assert (small, large) == (400, 1600)
    growth, decoded_growth = large_peak - small_peak, 1200 * 160 * 160 * 3 / 2**20
    print(f"stream: peak RSS {small_peak:.0f} -> {large_peak:.0f} MiB (+{growth:.1f}; decoded data +{decoded_growth:.0f})")
    assert growth < 12


# --- errors --------------------------------------------------------------------------------------

def test_damaged_shard_sets_fail_in_one_line_naming_the_shard(tmp_path):
    shards = synthetic_shards(tmp_path, train=64, test=32)
    run = compose_run([*STREAM, f"data.root={shards}", "data.pipeline=stream"])
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in shards.rglob("*") if p.is_file()}

    manifest = json.loads((shards / MANIFEST).read_text())
    shard = shards / manifest["splits"]["train"][1]["name"]
    moved = shard.rename(shard.with_suffix(".away"))
    with pytest.raises(DataError, match=r"shard train/shard-000001.tar is missing from .*restore it or pack"):
        build_pipeline(run, 0, 1, CPU)
    moved.rename(shard)
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in shards.rglob("*") if p.is_file()} == before

    empty = tmp_path / "empty"
    subprocess.run(["cp", "-r", str(shards), str(empty)], check=True)
    (empty / "train" / "shard-000000.tar").write_bytes(b"")
    with pytest.raises(DataError, match=r"shard train/shard-000000.tar in .* is empty \(0 bytes"):
        build_pipeline(compose_run([*STREAM, f"data.root={empty}"]), 0, 1, CPU)
    with pytest.raises(DataError, match="is not a shard set .*hpcbench-data pack"):
        build_pipeline(compose_run([*STREAM, f"data.root={tmp_path}"]), 0, 1, CPU)


def test_a_corrupt_jpeg_stops_training_with_its_shard_and_key(tmp_path):
    rng = np.random.default_rng(0)
    folder = write_image_folder(tmp_path / "folder", {split: [(rng.integers(0, 255, (32, 32, 3), np.uint8), i % 4)
                                                              for i in range(16)] for split in ("train", "test")})
    broken = folder / "train" / "class3" / "00015.jpg"  # image 15: position 15, in the second shard of 8
    broken.write_bytes(broken.read_bytes()[:1200])  # its header is whole (about 600 bytes), its data cut short
    shards = pack(folder, tmp_path / "shards", PackSettings(images_per_shard=8)).root
    before = hashlib.sha256((shards / "train" / "shard-000001.tar").read_bytes()).hexdigest()
    result = run_cli([*TINY_STREAM, f"data.root={shards}", "data.pipeline=stream", "train.epochs=1",
                      "data.num_workers=1", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)  # raised in a worker
    assert result.returncode == 1
    [line] = [line for line in result.stderr.splitlines() if "error" in line]
    assert line == ("hpcbench-train: error: corrupt JPEG in shard train/shard-000001.tar, key 00000015: "
                    "Image is incomplete or truncated; repack it from a good copy")
    assert read_json(tmp_path / "run" / "summary.json")["status"] == "failed"
    assert hashlib.sha256((shards / "train" / "shard-000001.tar").read_bytes()).hexdigest() == before


def test_a_run_resumes_only_on_the_shard_set_it_began_with(tmp_path):
    first = synthetic_shards(tmp_path / "a", train=64, test=32)
    other = synthetic_shards(tmp_path / "b", train=64, test=32, images_per_shard=16)  # same images, other shards
    run_dir = tmp_path / "run"
    base = [*TINY_STREAM, "data.pipeline=stream", "train.keep_checkpoints=resumable"]
    fit(compose_run([*base, f"data.root={first}", "train.epochs=1"]), run_dir)
    metrics = (run_dir / "metrics.jsonl").read_bytes()
    with pytest.raises(CheckpointError, match=f"trained on the shard set with digest {ShardSet(first).digest}, but "
                                              f"data.root={other} holds digest {ShardSet(other).digest}"):
        fit(compose_run([*base, f"data.root={other}", "train.epochs=2"]), run_dir)
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics
    moved = tmp_path / "moved"
    first.rename(moved)  # the same shard set elsewhere is the same data
    fit(compose_run([*base, f"data.root={moved}", "train.epochs=2"]), run_dir)
    assert [m["epoch"] for m in read_metrics(run_dir)] == [1, 2]


def _decode_under_an_address_space_limit(jpeg: bytes, connection) -> None:
    """In a forked child: decode `jpeg` with room for no more than 20 MB more, say what was raised."""
    import resource

    from hpcbench.data.stream_pipeline import decode_batch

    used = int(Path("/proc/self/status").read_text().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (used + 20 * 2**20, resource.RLIM_INFINITY))
    try:
        decode_batch([torch.frombuffer(bytearray(jpeg), dtype=torch.uint8)], (32, 32), CPU, lambda i: "key 00000000")
        connection.send(("nothing", ""))
    except Exception as error:  # what the training process would see
        connection.send((type(error).__name__, str(error)))


def test_running_out_of_memory_while_decoding_is_said_so_not_blamed_on_the_jpeg(tmp_path):
    """An 8,000 x 8,000 JPEG decodes to 192 MB: a process that cannot allocate them is out of memory
    (torch's CPU allocator raises a plain RuntimeError), its JPEG is not corrupt."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8000, 8000, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    # Forked from the test session's single-threaded fork server (torch preloaded): a fork of this
    # threaded process could inherit a lock another thread held.
    context = torch.multiprocessing.get_context("forkserver")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_decode_under_an_address_space_limit, args=(buffer.getvalue(), send))
    child.start()
    send.close()  # the child's end: a child that dies unheard ends recv() with EOFError
    assert receive.poll(120), "the decoding child said nothing in 2 minutes"
    kind, message = receive.recv()
    child.join(30)
    assert kind == "OutOfMemory", (kind, message)
    assert message.startswith("out of memory decoding a batch of 1 JPEGs") and "can't allocate memory" in message


def test_an_os_error_in_a_dataloader_worker_is_one_line(capsys):
    """A worker's OSError reaches the training process wrapped with the worker's traceback and no
    file name: the user gets its last line."""
    import errno

    from torch.utils.data import DataLoader, Dataset

    from hpcbench.cli import one_line_errors

    class Unreadable(Dataset):
        def __len__(self) -> int:
            return 1

        def __getitem__(self, index: int):
            raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(SystemExit) as exit_status, one_line_errors("hpcbench-train"):
        list(DataLoader(Unreadable(), num_workers=1))
    assert exit_status.value.code == 1
    assert capsys.readouterr().err == "hpcbench-train: error: OSError: [Errno 5] Input/output error\n"
