"""What the tests share: composing configs like Hydra does, running the real CLI, reading run
directories. Fixtures live in conftest.py."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import warm_cli
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from hpcbench.config import RunConfig
from hpcbench.config_load import register_schemas, to_run_config
from hpcbench.resolvers import register_resolvers
from hpcbench.rundir import EpochMetrics, RunSummary
from hpcbench.train import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]
CIFAR_TARBALL = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")  # MPICH's, installed with mpi4py's mpich extra
PRIMARY_CONFIG = "hpcbench"
# The test sweeps ask Slurm for their jobs' states 4 times a second (the launcher's default is 5 s):
# a tiny job runs for a second or two, and Hydra's launcher suite took 114 s polling once a second, 82 s so.
FAST_POLL = "hydra.launcher.poll_interval_s=0.25"

# Small enough for a 2-core machine: 32 px, a few hundred images, 2 epochs, no worker processes,
# no probes (a second a run; the tests of the probes turn them on).
TINY = [
    "data.image_size=32",
    "data.limit_train=128",
    "data.limit_test=64",
    "data.num_workers=0",
    "train.epochs=2",
    "batch_size=per_device_32",
    "train.probe=false",
]

register_resolvers()
register_schemas()


def compose_config(overrides: list[str]) -> DictConfig:
    """The config Hydra would compose for `hpcbench-train OVERRIDES`."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=PRIMARY_CONFIG, overrides=overrides)


def compose_run(overrides: list[str]) -> RunConfig:
    return to_run_config(compose_config(overrides))


def cli_env(cwd: Path, extra: dict | None = None) -> dict:
    """The environment of a CLI run: outputs under cwd/outputs, one-line errors."""
    env = {**os.environ, "HPCBENCH_OUTPUT_DIR": str(cwd / "outputs"), **(extra or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_cli(args: list[str], cwd: Path, timeout: float = 300, env: dict | None = None,
            module: str = "hpcbench.train", fresh_interpreter: bool = False,
            cgroup: Path | None = None, umask: int | None = None) -> subprocess.CompletedProcess:
    """Run `python -m MODULE ARGS` in `cwd`, outputs under cwd/outputs: forked from a process that
    has imported torch and Hydra already (warm_cli), or in a new interpreter when the test is about
    what the interpreter imports or reads at start-up; in the control group whose `cgroup.procs`
    is `cgroup`, and with `umask`, if given."""
    if fresh_interpreter:
        assert cgroup is None and umask is None, "a new interpreter joins no cgroup and keeps the umask here"
        return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=cli_env(cwd, env),
                              capture_output=True, text=True, timeout=timeout)
    return warm_cli.run(module, args, cwd, cli_env(cwd, env), timeout, cgroup, umask)


def start_cli(args: list[str], cwd: Path, env: dict | None = None, new_session: bool = False,
              module: str = "hpcbench.train") -> warm_cli.Started:
    """Start `python -m MODULE ARGS` in `cwd` as run_cli runs it, without waiting (a Popen of sorts:
    poll, wait, communicate, send_signal, kill, pid)."""
    return warm_cli.Started(module, args, cwd, cli_env(cwd, env), new_session)


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at `address` (now)."""
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def run_dirs(root: Path) -> list[Path]:
    """Every run directory (one holding resolved_config.yaml) under root, sorted."""
    return sorted({p.parent for p in root.rglob("resolved_config.yaml")})


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def one_step_result(path: Path) -> tuple[float, float, int, int, str]:
    """What tests/mpi_programs/one_step.py wrote: the worst difference from the serial step, how far
    the step moved the weights, nodes, world size and the MPI implementation the ranks ran."""
    worst, moved, nodes, world, implementation = path.read_text().split()
    return float(worst), float(moved), int(nodes), int(world), implementation


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def sacct(job_id: str, field: str) -> str:
    """One field of a Slurm job's accounting record ("" until slurmdbd has it)."""
    result = subprocess.run(["sacct", "-n", "-P", "-X", "-j", job_id, f"--format={field}"], capture_output=True,
                            text=True, timeout=30)
    return result.stdout.strip().splitlines()[0] if result.stdout.strip() else ""


def manifest(sweep: Path) -> dict:
    return json.loads((sweep / "manifest.json").read_text())


def job_count() -> int:
    """Every job Slurm's accounting knows: a sweep that submits nothing leaves it unchanged. The
    controller hands job records to slurmdbd through a queue, so an earlier test's jobs can reach
    accounting a moment later: count once that queue is empty."""
    deadline = time.monotonic() + 60
    while "DBD Agent queue size: 0" not in subprocess.run(["sdiag"], capture_output=True, text=True, timeout=30).stdout:
        assert time.monotonic() < deadline, "slurmctld's queue to slurmdbd did not drain in a minute"
        time.sleep(0.2)
    result = subprocess.run(["sacct", "-n", "-X", "-a", "-S", "2000-01-01", "--format=JobID"], capture_output=True,
                            text=True, timeout=30)
    return len(result.stdout.split())


def table_rows(report: str, heading: str) -> list[list[str]]:
    """The cells of the first markdown table after `heading` (header and rule left out)."""
    lines = report.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines[start + 2:end]]


ORIGINAL = [  # name, overrides, minutes, best accuracy, samples/s
    ("serial_cpu", ["+original_study=serial_cpu"], 515.9, 0.9617, 32.0),
    ("single_gpu", ["+original_study=single_gpu"], 178.3, 0.9603, 95.0),
    ("ddp_2gpu", ["+original_study=ddp_2gpu"], 87.0, 0.9558, 198.0),
]


def make_run(root: Path, name: str, overrides: list[str], minutes: float, best: float, rate: float,
             epochs: int = 20, status: str = "completed", gpu: str = "Tesla V100-SXM2-16GB",
             test_images: int = 10000) -> Path:
    """A run directory as hpcbench-train writes it, with chosen times and accuracies."""
    run = compose_run(["experiment=original_study", *overrides])
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "resolved_config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(run)))
    per_epoch = minutes * 60 / epochs
    metrics = [EpochMetrics(epoch=e, train_loss=1.0 / e, train_acc=best - 0.01, test_loss=0.5 / e,
                            test_acc=best if e == epochs else best - 0.02, lr=1e-4, epoch_time_s=per_epoch,
                            train_time_s=per_epoch * 0.9, eval_time_s=per_epoch * 0.1, data_time_s=per_epoch * 0.5,
                            compute_time_s=per_epoch * 0.4, samples_per_s=rate, peak_memory_mb=1000.0)
               for e in range(1, epochs + 1)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(asdict(m)) + "\n" for m in metrics))
    ranks = run.mode.ranks
    summary = RunSummary(status=status, mode=run.mode.name, device=run.mode.device, world_size=ranks, nodes=1,
                         ranks_per_node=ranks, model="mobilenet_v2", dataset="cifar10", image_size=224, scaling="weak",
                         batch_per_device=run.batch_size.size, global_batch=run.batch_size.size * ranks,
                         epochs_planned=epochs, epochs=epochs, total_time_s=minutes * 60, samples_per_s=rate,
                         best_test_acc=best, best_epoch=epochs, final_test_acc=best, started_at="2024-01-01T00:00:00",
                         finished_at="2024-01-02T00:00:00", train_images=50000, test_images=test_images)
    (run_dir / "summary.json").write_text(json.dumps(asdict(summary)))
    gpus = [gpu] * ranks if run.mode.device == "cuda" else []
    (run_dir / "env.json").write_text(json.dumps({"hostname": "node1", "cpu_model": "Xeon Gold 6248", "gpus": gpus,
                                                  "torch": "2.0", "python": "3.10", "git": {"commit": "abc", "dirty": False}}))
    return run_dir


def write_image_folder(root: Path, images: dict[str, list[tuple[np.ndarray, int]]], suffix: str = ".jpg") -> Path:
    """An ImageFolder tree (root/<split>/class<label>/<i><suffix>) of the given (HxWx3 uint8, label) images."""
    for split, items in images.items():
        for i, (array, label) in enumerate(items):
            path = root / split / f"class{label}" / f"{i:05d}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path, **({"quality": 95} if suffix == ".jpg" else {}))
    return root


def synthetic_shards(root: Path, train: int = 256, test: int = 64, images_per_shard: int = 32) -> Path:
    """A shard set (hpcbench-data pack) of the synthetic data set's first images, as JPEGs."""
    from hpcbench.data.pack import PackSettings, pack
    from hpcbench.data.sources import SyntheticSource

    splits = {split: SyntheticSource(seed=0, split=split, size=count) for split, count in (("train", train),
                                                                                            ("test", test))}
    folder = write_image_folder(root / "folder", {split: [(source.array(i), source.labels[i]) for i in range(len(source))]
                                                  for split, source in splits.items()})
    pack(folder, root / "shards", PackSettings(images_per_shard=images_per_shard))
    return root / "shards"


def mixed_size_folder(root: Path) -> Path:
    """An image folder of 3 classes, images of several sizes (30 train, 9 test), one a PNG."""
    rng = np.random.default_rng(0)
    sizes = [(40, 30), (24, 50), (64, 48)]
    images = {split: [(rng.integers(0, 255, (sizes[i % 3][1], sizes[i % 3][0], 3), dtype=np.uint8), i % 3)
                      for i in range(count)] for split, count in (("train", 30), ("test", 9))}
    write_image_folder(root, images)
    Path(root / "train" / "class1" / "00001.jpg").unlink()
    write_image_folder(root, {"train": [(images["train"][1][0], 1)]}, suffix=".png")
    return root


def worker_pids(run_dir_fragment: str) -> dict[int, int]:
    """MPI rank -> pid of the live worker processes of a run (MPICH's or Open MPI's ranks)."""
    pids = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().split()[2]
            environ = dict(item.split("=", 1) for item in (proc / "environ").read_bytes().decode().split("\0") if "=" in item)
        except (OSError, ValueError):
            continue
        if cmdline.startswith(f"{sys.executable} -m hpcbench.worker") and run_dir_fragment in cmdline and state != "Z":
            pids[int(environ.get("PMI_RANK", environ.get("OMPI_COMM_WORLD_RANK", -1)))] = int(proc.name)
    return pids


def start_and_wait_for_an_epoch(tmp_path: Path, args: list[str], env: dict | None = None) -> tuple[warm_cli.Started, dict[int, int]]:
    """A 2-rank run started in the background, once both ranks live and an epoch has ended."""
    job = start_cli(args, tmp_path, env=env)
    deadline = time.monotonic() + 120
    while len(pids := worker_pids(str(tmp_path))) < 2 or not list((tmp_path / "outputs").rglob("metrics.jsonl")):
        assert time.monotonic() < deadline and job.poll() is None, "the ranks never started training"
        time.sleep(0.5)
    return job, pids
