"""The training run: the original study's recipe, one process or one rank of a DDP world.

`train(run, out_dir, topology)` is the whole run; the Hydra entry point, the MPI worker and the
tests all call it. Only rank 0 writes the run directory.
"""
from __future__ import annotations

import logging
import random
import resource
import socket
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hpcbench.checkpoint import (
    BEST,
    LAST,
    PREVIOUS,
    CheckpointError,
    find_resume_checkpoint,
    restore_rng_state,
    rng_state,
    safe_load,
)
from hpcbench.config import RunConfig, global_batch, per_device_batch
from hpcbench.data.pipeline import DataPipeline, build_pipeline
from hpcbench.distributed import (
    SERIAL,
    Topology,
    all_reduce_sum,
    init_process_group,
    mpi_topology,
    resolve_backend,
    shutdown,
    threads_per_rank,
)
from hpcbench.environment import collect_environment
from hpcbench.errors import DeviceError, HpcbenchError
from hpcbench.models import build_model, check_pretrained_available
from hpcbench.progress import ProgressBar
from hpcbench.rundir import CHECKPOINTS, EpochMetrics, RunDirectory, RunSummary, read_summary
from hpcbench.schedule import LearningRateSchedule
from hpcbench.signals import Interrupted, StopFlag, stop_on_signals
from hpcbench.step import StepOptions, TrainStep

FP32 = StepOptions("fp32", channels_last=False, compile=False)

log = logging.getLogger("hpcbench")

TIMING_WARMUP_STEPS = 2  # steps per epoch left out of samples_per_s (allocator, worker start-up)
DIVERGENCE_CHECK_STEPS = 20  # steps between checks for a non-finite loss


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The RNG seed of one epoch on one rank: dropout and in-process augmentation depend on
    (seed, epoch, rank) alone, never on what ran before."""
    return (seed * 1_000_003 + epoch * 1_009 + rank) % 2**63


def select_device(run: RunConfig, topology: Topology) -> torch.device:
    if run.mode.device != "cuda":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"mode={run.mode.name} needs a CUDA device, but none is visible on {socket.gethostname()} "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); use mode=cpu or run on a GPU node"
        )
    if topology.local_rank >= torch.cuda.device_count():
        raise DeviceError(
            f"rank {topology.rank} is local rank {topology.local_rank} but this node has "
            f"{torch.cuda.device_count()} GPU(s): start at most one rank per GPU"
        )
    torch.cuda.set_device(topology.local_rank)
    return torch.device("cuda", topology.local_rank)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class EpochResult:
    loss: float
    accuracy: float
    time_s: float
    data_time_s: float = 0.0
    samples_per_s: float = 0.0


def _stop_if_diverged(nonfinite: torch.Tensor, topology: Topology, epoch: int) -> None:
    """One host sync (and one tiny all-reduce) every DIVERGENCE_CHECK_STEPS steps, so every
    rank stops together within that many steps of the first non-finite loss."""
    if all_reduce_sum(nonfinite.clone(), topology).item() > 0:
        raise Diverged(epoch)


def _totals_to_result(totals: torch.Tensor, topology: Topology) -> tuple[float, float]:
    """(mean loss, accuracy) from summed (loss, correct, count) of every rank."""
    loss_sum, correct, count = all_reduce_sum(totals, topology).tolist()
    return loss_sum / max(count, 1), correct / max(count, 1)


def train_one_epoch(
    step_fn: TrainStep,
    pipeline: DataPipeline,
    schedule: LearningRateSchedule,
    epoch: int,
    topology: Topology,
    label: str,
    stop: StopFlag,
) -> EpochResult:
    step_fn.model.train()
    device, optimizer = step_fn.device, step_fn.optimizer
    loader = pipeline.train_loader
    # (loss sum, correct, count) stay on the device: no .item() and no host sync per step.
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    nonfinite = torch.zeros(1, dtype=torch.float64, device=device)  # > 0 once a loss was NaN or inf
    steps = len(loader)
    progress = ProgressBar(steps, label, topology.is_main, loader.batch_size or 1)
    data_time, measured_images, measure_start = 0.0, 0, None
    start = time.perf_counter()
    batches = iter(loader)
    for step in range(1, steps + 1):
        wait_start = time.perf_counter()
        images, labels = next(batches)
        data_time += time.perf_counter() - wait_start
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        for group in optimizer.param_groups:
            group["lr"] = schedule.at(epoch, step - 1)
        loss, logits = step_fn(images, labels)
        with torch.no_grad():
            count = labels.new_tensor(labels.numel(), dtype=torch.float64)
            totals += torch.stack([loss.detach().double() * count, (logits.argmax(1) == labels).sum().double(), count])
            nonfinite += (~torch.isfinite(loss.detach())).double()
        if step % DIVERGENCE_CHECK_STEPS == 0 or step == steps:
            _stop_if_diverged(nonfinite, topology, epoch)
        if step == TIMING_WARMUP_STEPS:
            synchronize(device)
            measure_start = time.perf_counter()
        elif step > TIMING_WARMUP_STEPS:
            measured_images += labels.numel()
        progress.update(step)
        stop.check()
    synchronize(device)
    end = time.perf_counter()
    progress.close()
    if measure_start is None or measured_images == 0:  # fewer steps than the warm-up: use them all
        measure_start, measured_images = start, int(totals[2].item())
    rate = all_reduce_sum(torch.tensor([measured_images / (end - measure_start)], dtype=torch.float64), topology)
    loss, accuracy = _totals_to_result(totals, topology)
    return EpochResult(loss, accuracy, end - start, data_time, float(rate.item()))


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, topology: Topology,
             options: StepOptions = FP32) -> EpochResult:
    """Exact global test loss and accuracy: every rank evaluates a disjoint shard, the sums are
    all-reduced."""
    model.eval()
    start = time.perf_counter()
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with options.autocast(device):
            logits = model(options.prepare_input(images))
        loss_sum = nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
        totals += torch.stack(
            [loss_sum.double(), (logits.argmax(1) == labels).sum().double(), torch.tensor(labels.numel(), dtype=torch.float64, device=device)]
        )
    loss, accuracy = _totals_to_result(totals, topology)
    return EpochResult(loss, accuracy, time.perf_counter() - start)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile's and DDP's wrappers (its state_dict has plain keys)."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, DistributedDataParallel) else model


class Diverged(HpcbenchError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int):
        super().__init__(f"training diverged in epoch {epoch} (non-finite loss); lower train.lr")
        self.epoch = epoch


class Run:
    """State and bookkeeping of one training run: summary, metrics, checkpoints, resume."""

    def __init__(self, run: RunConfig, out_dir: Path, topology: Topology):
        """Write the config, environment and a `running` summary before anything can fail, so
        every failure after this point is recorded in summary.json."""
        self.cfg, self.topology = run, topology
        self.run_dir = RunDirectory(out_dir) if topology.is_main else None
        self.checkpoint_dir = Path(out_dir) / CHECKPOINTS
        self.history: List[EpochMetrics] = []
        self.started = time.perf_counter()
        self.elapsed_before_s = 0.0  # work done by earlier attempts of this run
        self.summary = RunSummary(
            status="running",
            mode=run.mode.name,
            device=run.mode.device,
            world_size=topology.world_size,
            nodes=topology.nodes,
            ranks_per_node=topology.local_size,
            model=run.model.name,
            dataset=run.data.name,
            image_size=run.data.image_size,
            scaling=run.batch_size.scaling,
            batch_per_device=per_device_batch(run),
            global_batch=global_batch(run),
            epochs_planned=run.train.epochs,
            started_at=datetime.now().isoformat(timespec="seconds"),
            hostname=socket.gethostname(),
        )
        if self.run_dir is not None:
            self.run_dir.write_config(run)
            self.run_dir.write_json("env.json", collect_environment())
            self.write()

    def write(self) -> None:
        if self.run_dir is not None:
            self.run_dir.write_summary(self.summary)

    def data_ready(self, pipeline: DataPipeline) -> None:
        self.summary.train_images, self.summary.test_images = pipeline.num_train, pipeline.num_test
        self.summary.classes = pipeline.classes
        self.write()

    def step_options(self, options: StepOptions, pipeline: str) -> None:
        self.summary.pipeline, self.summary.precision = pipeline, options.precision
        self.summary.channels_last, self.summary.compiled = options.channels_last, options.compile
        self.write()

    def resume(self, model: nn.Module, optimizer: torch.optim.Optimizer,
               scaler: Optional[torch.amp.GradScaler]) -> int:
        """Restore the latest checkpoint if there is one; returns the first epoch to train."""
        if not self.cfg.train.resume:
            return 1
        checkpoint = self._agreed_checkpoint()
        if checkpoint is None:
            return 1
        unwrap(model).load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scaler is not None and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        restore_rng_state(checkpoint["rng"][self.topology.rank])
        self.history = [EpochMetrics(**m) for m in checkpoint["history"]]
        self.elapsed_before_s = checkpoint["elapsed_s"]
        summary = self.summary
        summary.restarts = checkpoint["restarts"] + 1
        summary.resumed_from_epochs = [*checkpoint["resumed_from_epochs"], checkpoint["epoch"]]
        self._update_summary()
        self.write()
        if self.topology.is_main:
            log.info("resuming after epoch %d from %s (restart %d)", checkpoint["epoch"],
                     self.checkpoint_dir / "last.pt", summary.restarts)
        return checkpoint["epoch"] + 1

    def _agreed_checkpoint(self) -> Optional[dict]:
        """Rank 0 picks the checkpoint (last or previous); every rank loads that same file."""
        found, choice = None, None
        if self.topology.is_main:
            found = find_resume_checkpoint(self.checkpoint_dir, self.cfg)
            choice = found["epoch"] if found is not None else None
        if self.topology.distributed:
            box = [choice]
            torch.distributed.broadcast_object_list(box, src=0)
            choice = box[0]
        if choice is None or found is not None:
            return found
        for name in ("last", "last.prev"):
            path = self.checkpoint_dir / f"{name}.pt"
            if path.is_file():
                try:
                    state = safe_load(path)
                except CheckpointError:
                    continue
                if state.get("epoch") == choice:
                    return state
        raise CheckpointError(f"rank {self.topology.rank} cannot read the checkpoint of epoch {choice} in {self.checkpoint_dir}")

    def _update_summary(self) -> None:
        summary, history = self.summary, self.history
        if not history:
            return
        best = max(history, key=lambda m: (m.test_acc, -m.epoch))
        last = history[-1]
        summary.epochs = last.epoch
        summary.total_time_s = self.elapsed_before_s + time.perf_counter() - self.started
        summary.train_time_s = sum(m.train_time_s for m in history)
        summary.samples_per_s = statistics.median(m.samples_per_s for m in history)
        summary.final_test_acc, summary.final_test_loss = last.test_acc, last.test_loss
        summary.peak_memory_mb = max(m.peak_memory_mb for m in history)
        summary.best_test_acc, summary.best_epoch = best.test_acc, best.epoch

    def record_epoch(self, metrics: EpochMetrics, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scaler: Optional[torch.amp.GradScaler], classes: List[str]) -> None:
        previous_best = self.summary.best_test_acc
        self.history.append(metrics)
        self._update_summary()
        rngs = [rng_state()]
        if self.topology.distributed:  # every rank's RNG states, kept by rank 0
            rngs = [None] * self.topology.world_size
            torch.distributed.all_gather_object(rngs, rng_state())
        if self.run_dir is None:
            return
        self.run_dir.write_metrics(self.history)
        if self.cfg.train.save_checkpoints:
            weights = {
                "model": unwrap(model).state_dict(),
                "epoch": metrics.epoch,
                "test_acc": metrics.test_acc,
                "classes": classes,
                "config": OmegaConf.to_container(OmegaConf.structured(self.cfg)),
            }
            resumable = {
                **weights,
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "history": [asdict(m) for m in self.history],
                "rng": rngs,
                "elapsed_s": self.summary.total_time_s,
                "restarts": self.summary.restarts,
                "resumed_from_epochs": self.summary.resumed_from_epochs,
            }
            self.run_dir.save_checkpoint(LAST, resumable, previous=PREVIOUS)
            if previous_best is None or metrics.test_acc > previous_best:
                self.run_dir.save_checkpoint(BEST, weights)
        self.write()

    def finish(self, status: str, error: Optional[str] = None) -> None:
        self.summary.status, self.summary.error = status, error
        self.summary.finished_at = datetime.now().isoformat(timespec="seconds")
        self.write()


def build_training_model(cfg: RunConfig, num_classes: int, device: torch.device, topology: Topology,
                         options: StepOptions) -> nn.Module:
    model = options.prepare_model(build_model(cfg.model.name, num_classes, cfg.model.pretrained).to(device))
    if topology.distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(model) if options.compile else model


def already_completed(cfg: RunConfig, out_dir: Path) -> Optional[RunSummary]:
    """The summary of a run that finished in `out_dir` before: it is not trained again."""
    summary = read_summary(out_dir)
    if (cfg.train.resume and summary.get("status") == "completed"
            and summary.get("epochs") == cfg.train.epochs and (Path(out_dir) / CHECKPOINTS / "last.pt").is_file()):
        return RunSummary(**summary)
    return None


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[-1] if text else ''}"


def train(cfg: RunConfig, out_dir: Path, topology: Topology = SERIAL) -> RunSummary:
    """Train `cfg` and write the run directory `out_dir` (rank 0). Returns the final summary."""
    done = already_completed(cfg, out_dir)
    if done is not None:
        if topology.is_main:
            log.info("%s already holds a completed run (%d epochs): not training it again", out_dir, done.epochs)
        return done
    state = Run(cfg, out_dir, topology)
    try:
        device = select_device(cfg, topology)
        if device.type == "cpu":
            torch.set_num_threads(threads_per_rank(topology, cfg.mode.cpus_per_rank))
        if cfg.model.pretrained:
            check_pretrained_available(cfg.model.name)  # fail before any data is read
        seed_everything(cfg.train.seed)
        torch.use_deterministic_algorithms(cfg.train.deterministic, warn_only=True)
        pipeline = build_pipeline(cfg, topology.rank, topology.world_size, device)
        state.data_ready(pipeline)
        with stop_on_signals() as stop:
            _fit(cfg, state, pipeline, device, topology, stop)
    except Diverged as error:
        state.summary.diverged_epoch = error.epoch
        state.finish("diverged", str(error))
        raise
    except (Interrupted, KeyboardInterrupt, SystemExit) as error:  # resumable from the last checkpoint
        state.finish("interrupted", _one_line(error))
        raise
    except BaseException as error:
        state.finish("failed", _one_line(error))
        raise
    state.finish("completed")
    return state.summary


def _fit(cfg: RunConfig, state: Run, pipeline: DataPipeline, device: torch.device, topology: Topology,
         stop: StopFlag) -> None:
    options = StepOptions.resolve(cfg.train.precision, cfg.train.channels_last, cfg.train.compile, device)
    state.step_options(options, cfg.data.pipeline)
    model = build_training_model(cfg, len(pipeline.classes), device, topology, options)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    step_fn = TrainStep(model, optimizer, options, device)
    schedule = LearningRateSchedule.for_run(cfg, len(pipeline.train_loader))
    first_epoch = state.resume(model, optimizer, step_fn.scaler)
    if topology.is_main:
        log.info(
            "training %s on %s (%s pipeline, %s%s): %d ranks x batch %d, %d train / %d test images at %d px, "
            "epochs %d-%d", cfg.model.name, device, cfg.data.pipeline, options.precision,
            ", channels_last" if options.channels_last else "", topology.world_size, per_device_batch(cfg),
            pipeline.num_train, pipeline.num_test, cfg.data.image_size, first_epoch, cfg.train.epochs,
        )
    for epoch in range(first_epoch, cfg.train.epochs + 1):
        pipeline.set_epoch(epoch, cfg.train.seed)
        seed_everything(epoch_seed(cfg.train.seed, epoch, topology.rank))
        lr = schedule.at(epoch)
        label = f"epoch {epoch}/{cfg.train.epochs}"
        trained = train_one_epoch(step_fn, pipeline, schedule, epoch, topology, label, stop)
        tested = evaluate(model, pipeline.test_loader, device, topology, options)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=trained.loss,
            train_acc=trained.accuracy,
            test_loss=tested.loss,
            test_acc=tested.accuracy,
            lr=lr,
            epoch_time_s=trained.time_s + tested.time_s,
            train_time_s=trained.time_s,
            eval_time_s=tested.time_s,
            data_time_s=trained.data_time_s,
            compute_time_s=trained.time_s - trained.data_time_s,
            samples_per_s=trained.samples_per_s,
            peak_memory_mb=peak_memory_mb(device),
        )
        state.record_epoch(metrics, model, optimizer, step_fn.scaler, pipeline.classes)
        if topology.is_main:
            log.info(
                "%s train_loss %.4f train_acc %.4f test_loss %.4f test_acc %.4f lr %.1e %.1fs %.1f img/s",
                label, metrics.train_loss, metrics.train_acc, metrics.test_loss, metrics.test_acc, lr,
                metrics.epoch_time_s, metrics.samples_per_s,
            )


def train_rank(
    cfg: RunConfig, out_dir: Path, configure_logging: Optional[Callable[[bool], None]] = None
) -> Optional[RunSummary]:
    """One rank of a DDP run inside an MPI world. Returns the summary on rank 0, None elsewhere."""
    topology = mpi_topology(cfg.mode.ranks)
    if configure_logging is not None:
        configure_logging(topology.is_main)
    select_device(cfg, topology)  # NCCL wants the rank's GPU chosen before the process group starts
    init_process_group(topology, resolve_backend(cfg.mode.backend, cfg.mode.device), cfg.mode.collective_timeout_s)
    try:
        summary = train(cfg, out_dir, topology)
    finally:
        shutdown()
    return summary if topology.is_main else None
