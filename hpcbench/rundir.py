"""The run directory: the contract between a run, the report and the user.

    .hydra/                 Hydra's composed config, hydra config and overrides
    resolved_config.yaml    the full config with every interpolation resolved (re-runnable)
    metrics.jsonl           one EpochMetrics object per line
    summary.json            RunSummary: status and headline numbers
    env.json                hardware, software versions, git commit, Slurm variables
    checkpoints/best.pt     weights with the best test accuracy
    checkpoints/last.pt     everything needed to resume (and last.prev.pt, the one before it)
    probe.json              the ceilings measured at the start: interconnect, processor, model FLOPs
    train.log               the log
    ranks/rank<N>.log       a failed rank's traceback (ranks/rank<N>.json: its one-line record)

Every file is written atomically (temporary file, fsync, rename): a run killed mid-write
leaves the previous version, never a truncated one. Only rank 0 writes here, except a failing
rank's own files under ranks/.

Checkpoints while a run is live: best.pt, last.pt and last.prev.pt (about 1 + 2 x 3 model sizes
with Adam's two moments). Once it completes, `train.keep_checkpoints` decides what stays:
`best` (the default: best.pt only, one model size), `resumable` (best.pt and last.pt: the run can
be extended with more epochs), `all`. Failed and interrupted runs keep everything.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hpcbench.config import RunConfig
from hpcbench.files import atomic_write_bytes, atomic_write_json, atomic_write_text, torch_bytes

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
ENV = "env.json"
RESOLVED_CONFIG = "resolved_config.yaml"
PROBE = "probe.json"
CHECKPOINTS = "checkpoints"
LAST, PREVIOUS, BEST = "last", "last.prev", "best"  # checkpoints/<name>.pt


@dataclass
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    lr: float
    epoch_time_s: float  # training + evaluation, wall clock
    train_time_s: float
    eval_time_s: float
    samples_per_s: float  # training images per second, all ranks, after the warm-up steps
    peak_memory_mb: float  # GPU: max allocated; CPU: max resident set of the process
    # Where the training steps' time went (training/timing.py), seconds over the epoch, the mean
    # over ranks: the four phases add up to the steps' time.
    data_time_s: float = 0.0  # waiting for, augmenting and moving batches
    compute_time_s: float = 0.0  # forward + backward
    comm_exposed_s: float = 0.0  # all-reduce the backward pass could not hide
    optimizer_time_s: float = 0.0  # optimizer step and bookkeeping
    comm_total_s: float = 0.0  # all-reduce in flight, hidden or not
    steps: int = 0
    grad_buckets: int = 0  # gradient buckets all-reduced per step (DDP)
    step_time_mean_s: float = 0.0  # rank 0's steps after the warm-up: mean and standard deviation
    step_time_std_s: float = 0.0
    timed_steps: int = 0
    straggler_ratio: float = 1.0  # the slowest rank's compute / the median rank's
    rank_times: Dict[str, List[float]] = field(default_factory=dict)  # phase (and "train") -> every rank's seconds (DDP)


@dataclass
class RunSummary:
    status: str  # running | completed | failed | diverged | interrupted
    mode: str
    device: str
    world_size: int
    nodes: int
    ranks_per_node: int
    model: str
    dataset: str
    image_size: int
    scaling: str  # weak | strong
    batch_per_device: int
    global_batch: int
    epochs_planned: int
    train_images: int = 0  # known once the data set is open
    test_images: int = 0
    epochs: int = 0  # epochs completed
    total_time_s: float = 0.0  # wall clock of the work done, summed over restarts, evaluation included
    train_time_s: float = 0.0
    samples_per_s: float = 0.0  # median over epochs
    best_test_acc: Optional[float] = None
    best_epoch: Optional[int] = None
    final_test_acc: Optional[float] = None
    final_test_loss: Optional[float] = None
    peak_memory_mb: float = 0.0
    started_at: str = ""
    finished_at: Optional[str] = None
    error: Optional[str] = None
    diverged_epoch: Optional[int] = None
    pipeline: str = ""  # tensor | compressed | stream | pil
    data_digest: str = ""  # data=shards: the shard set's digest (a resume on another one is refused)
    precision: str = ""  # fp32 | bf16 | fp16, as resolved for the device
    channels_last: bool = False
    compiled: bool = False
    restarts: int = 0  # times the run was resumed from a checkpoint
    resumed_from_epochs: List[int] = field(default_factory=list)
    classes: List[str] = field(default_factory=list)
    hostname: str = ""
    # Why it scaled as it did (training/breakdown.py): totals of the epochs' phases, the probes'
    # ceilings and what the run achieved against them, and the cost.
    steps_per_epoch: int = 0
    cores_per_rank: int = 0
    data_time_s: float = 0.0
    compute_time_s: float = 0.0
    comm_exposed_s: float = 0.0
    optimizer_time_s: float = 0.0
    comm_total_s: float = 0.0
    eval_time_s: float = 0.0
    comm_exposed_share: Optional[float] = None  # of the training time
    comm_overlap_share: Optional[float] = None  # of the all-reduce time: hidden behind compute
    straggler_ratio: Optional[float] = None  # the worst epoch's
    grad_bytes: int = 0  # gradients all-reduced per step
    grad_buckets: int = 0
    flops_per_sample: Optional[float] = None  # training FLOPs per image (3 x forward)
    peak_tflops: Optional[float] = None  # measured per rank, in the run's precision
    nominal_peak_tflops: Optional[float] = None  # the hardware profile's per device, when it states one
    achieved_tflops: Optional[float] = None  # per rank: flops_per_sample x samples/s / ranks
    mfu: Optional[float] = None  # achieved / measured peak
    mfu_nominal: Optional[float] = None  # achieved / nominal peak
    busbw_gbps: Optional[float] = None  # the probe's best all-reduce bus bandwidth
    allreduce_latency_s: Optional[float] = None  # the probe's smallest message
    nominal_busbw_gbps: Optional[float] = None  # the hardware profile's interconnect, when it states one
    device_hours: float = 0.0
    device_hours_unit: str = ""  # GPU-hours | core-hours
    energy_j: Optional[float] = None
    energy_source: str = ""  # nvml | rapl | unavailable: why


class RunDirectory:
    def __init__(self, path: Path):
        self.path = Path(path)

    def checkpoint_path(self, name: str) -> Path:
        return self.path / CHECKPOINTS / f"{name}.pt"

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_json(self.path / name, obj)

    def write_config(self, run: RunConfig) -> None:
        from omegaconf import OmegaConf

        atomic_write_text(self.path / RESOLVED_CONFIG, OmegaConf.to_yaml(OmegaConf.structured(run)))

    def write_summary(self, summary: RunSummary) -> None:
        self.write_json(SUMMARY, asdict(summary))

    def write_metrics(self, history: List[EpochMetrics]) -> None:
        """Rewrite the whole file atomically (a few hundred bytes an epoch): a reader never sees
        half a line, and a resumed run's file holds exactly its epochs."""
        lines = "".join(json.dumps(asdict(m), sort_keys=True) + "\n" for m in history)
        atomic_write_text(self.path / METRICS, lines)

    def mark_failed_if_running(self, error: str) -> None:
        """Record a failure a crashed process could not record itself: in an hpcbench run
        directory (it has resolved_config.yaml) whose summary is missing or says running; any
        other job directory (a foreign Hydra app's) is left alone."""
        summary = read_summary(self.path)
        if (self.path / RESOLVED_CONFIG).is_file() and summary.get("status", "running") == "running":
            summary.update(status="failed", error=error)
            self.write_json(SUMMARY, summary)

    def save_checkpoint(self, name: str, state: Dict[str, Any], previous: Optional[str] = None) -> None:
        """Save `state` as checkpoints/NAME.pt; with `previous`, the old one becomes PREVIOUS.pt."""
        keep = self.checkpoint_path(previous) if previous else None
        atomic_write_bytes(self.checkpoint_path(name), torch_bytes(state), keep_previous=keep)

    def prune_checkpoints(self, keep: str) -> None:
        """What a completed run no longer needs goes (see the module docstring)."""
        names = {"best": (LAST, PREVIOUS), "resumable": (PREVIOUS,), "all": ()}[keep]
        for name in names:
            self.checkpoint_path(name).unlink(missing_ok=True)


def read_resolved_config(run_dir: Path) -> RunConfig:
    from omegaconf import OmegaConf

    from hpcbench.config_load import to_run_config

    return to_run_config(OmegaConf.load(Path(run_dir) / RESOLVED_CONFIG))


def read_summary(run_dir: Path) -> Dict[str, Any]:
    """summary.json as a dict; {} when it does not exist yet."""
    path = Path(run_dir) / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else {}
