"""Data at scale under a real site's limits: ImageNet's 1,282 shards under a soft limit of 1,024
open files, exact resume with DataLoader workers and dropout, the memory a job may use (a cgroup,
Slurm's --mem) rather than the node's, and ranks that agree on one pipeline."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    MPIEXEC,
    REPO,
    TINY,
    cli_env,
    compose_run,
    read_json,
    read_metrics,
    run_cli,
    synthetic_shards,
    write_image_folder,
)

from hpcbench.data.job_memory import job_memory, slurm_limits
from hpcbench.data.open_files import MAX_OPEN_PER_READER, OpenFiles
from hpcbench.data.pack import PackSettings, pack
from hpcbench.data.pipeline import build_pipeline
from hpcbench.data.shards import ShardSet
from hpcbench.errors import ConfigError
from hpcbench.training.continuation import CheckpointError
from hpcbench.training.trainer import fit

CPU = torch.device("cpu")
OPEN_FILE_LIMIT = 1024  # the common soft limit on cluster nodes
SMALL_CNN = ["--config-dir", str(REPO / "examples" / "custom_workload" / "conf"), "model=small_cnn"]
EXAMPLE_PATH = {"PYTHONPATH": str(REPO / "examples" / "custom_workload")}


# --- open files ----------------------------------------------------------------------------------

def _shard_descriptors(pid: int, shard_root: str) -> int:
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # the process ended
        return 0
    count = 0
    for name in names:
        try:
            count += os.readlink(f"/proc/{pid}/fd/{name}").startswith(shard_root)
        except OSError:
            pass
    return count


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


class ShardFileWatch(threading.Thread):
    """The most shard files each process under `root` held open at once, sampled every 50 ms (a
    leak only grows, so sampling sees it)."""

    def __init__(self, root: int, shard_root: Path):
        super().__init__(daemon=True)
        self.root, self.shard_root, self.peaks, self.done = root, str(shard_root), {}, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for pid in _descendants(self.root):
                self.peaks[pid] = max(self.peaks.get(pid, 0), _shard_descriptors(pid, self.shard_root))
            time.sleep(0.05)


def test_a_reader_keeps_at_most_its_capacity_of_shard_files_open(tmp_path):
    paths = []
    for i in range(12):
        paths.append(tmp_path / f"shard-{i}.tar")
        paths[-1].write_bytes(bytes([i]) * 64)
    files = OpenFiles([str(p) for p in paths], capacity=4)
    for _ in range(3):  # epochs
        for i in range(12):
            assert files.pread(i, 8, 16) == bytes([i]) * 8
            assert len(files) <= 4 and _shard_descriptors(os.getpid(), str(tmp_path)) <= 4
    files.close()
    assert _shard_descriptors(os.getpid(), str(tmp_path)) == 0


def test_the_soft_open_file_limit_is_raised_to_the_hard_one():
    program = ("import resource; from hpcbench.data.open_files import raise_open_file_limit, open_files_per_reader; "
               "print(*raise_open_file_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0], open_files_per_reader())")
    out = subprocess.run(["prlimit", "--nofile=256:1024", sys.executable, "-c", program], capture_output=True,
                         text=True, timeout=60, check=True).stdout.split()
    assert out == ["256", "1024", "1024", str(MAX_OPEN_PER_READER)]


@pytest.fixture(scope="module")
def imagenet_many_shards(tmp_path_factory) -> Path:
    """More shards than ImageNet's 1,282 (one 8 px image each): 1,504 train + 64 test."""
    root = tmp_path_factory.mktemp("many_shards")
    rng = np.random.default_rng(0)
    images = {split: [(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), i % 4) for i in range(count)]
              for split, count in (("train", 1504), ("test", 64))}
    # 4 packers on 2 cores: a shard's writing waits on fsync more than it computes
    pack(write_image_folder(root / "folder", images), root / "shards", PackSettings(images_per_shard=1), workers=4)
    return root / "shards"


def _ddp_under_open_file_limit(tmp_path: Path, shards: Path, ranks: list[list[str]],
                               overrides: tuple[str, ...] = ()) -> tuple[Path, dict[int, int]]:
    """`mpiexec` of one hpcbench-train per entry of `ranks` (MPMD: [-env NAME VALUE ...] of that rank),
    every process under a limit of OPEN_FILE_LIMIT open files, soft and hard."""
    run_dir = tmp_path / "run"
    args = [*SMALL_CNN, "data=shards", f"data.root={shards}", "data.image_size=32", "data.num_workers=2",
            "train.epochs=2", "batch_size=per_device_32", "train.probe=false", "mode=ddp", f"mode.ranks={len(ranks)}",
            "mode.device=cpu", f"hydra.run.dir={run_dir}", *overrides]
    command = ["prlimit", f"--nofile={OPEN_FILE_LIMIT}:{OPEN_FILE_LIMIT}", MPIEXEC]
    for rank, environment in enumerate(ranks):
        command += [*([":"] if rank else []), "-n", "1", *environment, sys.executable, "-m", "hpcbench.train", *args]
    job = subprocess.Popen(command, cwd=tmp_path, env=cli_env(tmp_path, EXAMPLE_PATH), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watch = ShardFileWatch(job.pid, shards)
    watch.start()
    _, stderr = job.communicate(timeout=300)
    watch.done.set()
    assert job.returncode == 0, stderr[-3000:]
    return run_dir, watch.peaks


@pytest.mark.slow
def test_imagenet_many_shards_stream_under_a_limit_of_1024_open_files_and_ranks_agree(tmp_path, imagenet_many_shards):
    """2 ranks x 2 workers stream 1,568 shards for 2 epochs; rank 1's job may use 1 MB (Slurm's
    --mem), so it alone would stream while rank 0 would keep the data decoded: both stream."""
    run_dir, peaks = _ddp_under_open_file_limit(tmp_path, imagenet_many_shards,
                                                [[], ["-env", "SLURM_MEM_PER_NODE", "1"]])
    summary = read_json(run_dir / "summary.json")
    assert (summary["status"], summary["pipeline"], summary["train_images"]) == ("completed", "stream", 1504)
    log = (run_dir / "train.log").read_text()
    assert "data.pipeline=auto: stream for every rank, the choice of the rank with the least memory" in log
    assert "rank 0 and 0 more: tensor" in log and "rank 1 and 0 more: stream" in log
    assert "half of 1.0 MiB (Slurm's --mem, SLURM_MEM_PER_NODE=1 MB)" in log
    assert summary["data_digest"] == ShardSet(imagenet_many_shards).digest
    # Each reader keeps at most 64 shard files open (1,024 / 16): every process, train and test
    # loaders' workers included, stayed within it; the stream's workers filled it.
    print(f"shard files open at most, per process: {sorted(peaks.values(), reverse=True)[:8]}")
    assert max(peaks.values()) <= MAX_OPEN_PER_READER
    assert max(peaks.values()) >= MAX_OPEN_PER_READER // 2  # the watch saw the readers at work


@pytest.mark.slow
def test_compressed_reads_many_shards_once_under_a_limit_of_1024_open_files(tmp_path, imagenet_many_shards):
    run_dir, peaks = _ddp_under_open_file_limit(tmp_path, imagenet_many_shards, [[], []], ("data.pipeline=compressed",))
    summary = read_json(run_dir / "summary.json")
    assert (summary["status"], summary["pipeline"], summary["train_images"]) == ("completed", "compressed", 1504)
    assert max(peaks.values()) <= MAX_OPEN_PER_READER


# --- exact resume with workers and dropout --------------------------------------------------------

@pytest.mark.slow
def test_every_pipeline_resumes_on_two_ranks_with_workers_to_the_uninterrupted_metrics(tmp_path):
    """2 DDP ranks, 2 DataLoader workers each, a model with dropout before its head (as mobilenet_v2
    has): resumed after epoch 1, stream, compressed and tensor each end bitwise equal to their
    uninterrupted run (pil's loaders had generators of their own already)."""
    shards = synthetic_shards(tmp_path, train=128, test=64)
    program = str(Path(__file__).parent / "mpi_programs" / "resume_pipelines.py")
    kinds = ["stream", "compressed", "tensor"]
    result = subprocess.run([MPIEXEC, "-n", "2", sys.executable, program, str(shards), str(tmp_path / "out"), *kinds],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = ("train_loss", "train_acc", "test_loss", "test_acc")
    for kind in kinds:
        whole, resumed = (read_metrics(tmp_path / "out" / kind / name) for name in ("whole", "resumed"))
        assert [[m[k] for k in measured] for m in resumed] == [[m[k] for k in measured] for m in whole], kind
        summary = read_json(tmp_path / "out" / kind / "resumed" / "summary.json")
        assert (summary["pipeline"], summary["restarts"], summary["resumed_from_epochs"]) == (kind, 1, [1])


# --- the memory a job may use, and one pipeline decided once --------------------------------------

def test_slurms_memory_grant_is_read_as_the_jobs_limit():
    assert slurm_limits({"SLURM_MEM_PER_NODE": "64000"})[0].bytes == 64000 * 2**20
    [per_cpu] = slurm_limits({"SLURM_MEM_PER_CPU": "4000", "SLURM_CPUS_ON_NODE": "8"})
    assert per_cpu.bytes == 32000 * 2**20 and "x 8 CPUs" in per_cpu.source
    assert slurm_limits({"SLURM_MEM_PER_NODE": "0"}) == []  # --mem=0: all of the node's memory
    granted = job_memory({"SLURM_MEM_PER_NODE": "512"})
    assert (granted.bytes, granted.source) == (512 * 2**20, "Slurm's --mem, SLURM_MEM_PER_NODE=512 MB")


def _own_memory_cgroup(tmp_name: str) -> tuple[Path, str]:
    """A child of this process's memory cgroup (v1 or v2) and the name of its limit file."""
    from hpcbench.data.job_memory import _cgroup_dirs

    for directory, _, limit_file in _cgroup_dirs():
        child = directory / tmp_name
        try:
            child.mkdir()
        except OSError:
            continue
        if (child / limit_file).exists():
            return child, limit_file
        child.rmdir()
    if os.environ.get("CI"):
        pytest.fail("no writable memory cgroup here: CI runs as root with cgroups mounted")
    pytest.skip("no writable memory cgroup here (needs root)")


def test_auto_follows_the_cgroups_memory_limit_not_the_nodes(tmp_path):
    """72 images of 1024 x 1024 px: 0.21 GiB decoded, 0.63 GiB while building. On this machine's
    RAM they stay decoded; in a cgroup of 1 GiB (budget: half) a run keeps their JPEG bytes."""
    coarse = np.random.default_rng(0).integers(0, 255, (72, 8, 8, 3)).astype(np.uint8)
    images = [(np.kron(c, np.ones((128, 128, 1), dtype=np.uint8)), i % 4) for i, c in enumerate(coarse)]
    folder = write_image_folder(tmp_path / "folder", {"train": images[:64], "test": images[64:]})
    shards = pack(folder, tmp_path / "shards", PackSettings(images_per_shard=32)).root
    overrides = [*SMALL_CNN, "data=shards", f"data.root={shards}", "data.image_size=32", "data.num_workers=0",
                 "train.epochs=1", "batch_size=per_device_32", "train.probe=false"]
    from hpcbench.data.choice import judge
    from hpcbench.data.pipeline import open_sources

    run = compose_run(overrides[3:])
    assert judge(run, *open_sources(run.data), CPU).kind == "tensor"  # under the node's RAM

    cgroup, limit_file = _own_memory_cgroup(f"hpcbench-test-{os.getpid()}")
    try:
        (cgroup / limit_file).write_text(str(2**30))
        result = run_cli([*overrides, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, env=EXAMPLE_PATH,
                         cgroup=cgroup / "cgroup.procs")
    finally:
        cgroup.rmdir()
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_json(tmp_path / "run" / "summary.json")["pipeline"] == "compressed"
    [line] = [line for line in (tmp_path / "run" / "train.log").read_text().splitlines() if "data.pipeline=auto" in line]
    assert f"half of 1.00 GiB (the cgroup limit {cgroup / limit_file})" in line, line


def test_a_resumed_run_keeps_its_pipeline_or_says_in_one_line_why_it_cannot(tmp_path):
    shards = synthetic_shards(tmp_path, train=64, test=32)
    base = [*TINY, "data=shards", f"data.root={shards}", "train.keep_checkpoints=resumable"]
    tiny_budget = "data.memory_budget_mb=0.01"
    # Began streaming (a small budget); given more memory on resume it keeps streaming.
    streamed = tmp_path / "streamed"
    fit(compose_run([*base, tiny_budget, "train.epochs=1"]), streamed)
    fit(compose_run([*base, "train.epochs=2"]), streamed)
    summary = read_json(streamed / "summary.json")
    assert (summary["pipeline"], summary["epochs"], summary["restarts"]) == ("stream", 2, 1)
    # Another pipeline by name is refused before anything is written.
    before = (streamed / "summary.json").read_bytes()
    with pytest.raises(CheckpointError, match="was fed by the stream pipeline and cannot continue with "
                                              "data.pipeline=tensor"):
        fit(compose_run([*base, "data.pipeline=tensor", "train.epochs=3"]), streamed)
    assert (streamed / "summary.json").read_bytes() == before
    # Began decoded on the device; resumed where that no longer fits: one line, and how to allow it.
    decoded = tmp_path / "decoded"
    fit(compose_run([*base, "train.epochs=1"]), decoded)
    assert read_json(decoded / "summary.json")["pipeline"] == "tensor"
    with pytest.raises(ConfigError, match=r"cannot resume with the tensor pipeline this run began with: it does not "
                                          r"fit rank 0's memory budget here .*data.memory_budget_mb=N"):
        fit(compose_run([*base, tiny_budget, "train.epochs=2"]), decoded)
    fit(compose_run([*base, "train.epochs=2"]), decoded)
    assert read_json(decoded / "summary.json")["epochs"] == 2


# --- compressed: what a rank holds, workers that do not fork ----------------------------------------

def test_compressed_holds_every_training_image_but_only_its_ranks_test_range(tmp_path):
    shards = synthetic_shards(tmp_path, train=64, test=30, images_per_shard=8)
    run = compose_run([*TINY, "data=shards", f"data.root={shards}", "data.pipeline=compressed", "mode=ddp",
                       "mode.ranks=2", "mode.device=cpu"])
    pipeline = build_pipeline(run, 1, 2, CPU)
    train, test = pipeline.train_loader.reader.reader, pipeline.test_loader.reader.reader
    assert train.resident == range(64) and test.resident == range(15, 30)
    assert test.memory.numel() == int(test.index.length[15:30].sum())
    assert all(test.read(p) == test.files.pread(int(test.index.shard[p]), int(test.index.length[p]),
                                                int(test.index.offset[p])) for p in range(15, 30))


def test_workers_started_by_forkserver_read_the_same_batches(tmp_path):
    """Python 3.14 starts DataLoader workers with forkserver: each receives the dataset pickled,
    the epoch's order included (a lambda could not be sent), compressed's bytes as shared memory."""
    from torch.utils.data import DataLoader

    from hpcbench.data.stream_pipeline import EpochKeys

    shards = synthetic_shards(tmp_path, train=64, test=32)
    forkserver = torch.multiprocessing.get_context("forkserver")  # the test session's: torch preloaded
    for kind in ("stream", "compressed"):
        run = compose_run([*TINY, "data=shards", f"data.root={shards}", f"data.pipeline={kind}"])
        reader = build_pipeline(run, 0, 1, CPU).train_loader.reader
        keys = EpochKeys(2)
        keys.epoch = 3

        in_process, in_workers = ([images for images, _ in DataLoader(reader, sampler=keys, batch_size=None,
                                                                      num_workers=workers, multiprocessing_context=context)]
                                  for workers, context in ((0, None), (1, forkserver)))
        assert len(in_process) == 2 and all(torch.equal(a, b) for a, b in zip(in_process, in_workers, strict=True))
