"""The training run: the original study's recipe, in one process or as one rank of a DDP world.

`fit(cfg, out_dir, topology)` is the whole run and reads top to bottom: device, data, model,
optimizer, resume, then per epoch: train, evaluate, record. The Hydra entry point, the MPI
worker and the tests all call it. Only rank 0 writes the run directory (training/record.py).
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from hpcbench.config import RunConfig, per_device_batch
from hpcbench.data.sampling import DataPipeline
from hpcbench.errors import HpcbenchError
from hpcbench.models import build_configured_model, check_pretrained_available, forward_flops, unwrap
from hpcbench.mpi.failures import failure_line, one_line
from hpcbench.mpi.process_group import all_reduce_sum, wait_for_main_rank
from hpcbench.mpi.topology import SERIAL, Topology, threads_per_rank
from hpcbench.progress import Progress
from hpcbench.rundir import EpochMetrics, RunSummary
from hpcbench.training.breakdown import phase_fields, rank_vector
from hpcbench.training.checkpoint import agreed_resume_checkpoint, restore_training_state
from hpcbench.training.continuation import check_run_directory
from hpcbench.training.cost import EnergyMeter, energy_of_all_ranks
from hpcbench.training.ddp import wrap_for_ddp
from hpcbench.training.device import peak_memory_mb, select_device, synchronize
from hpcbench.training.optim import LearningRateSchedule, build_optimizer
from hpcbench.training.probe import probe_run
from hpcbench.training.record import RunRecord
from hpcbench.training.run_data import build_run_pipeline
from hpcbench.training.signals import Interrupted, StopFlag, stop_on_signals
from hpcbench.training.step import FP32, StepOptions, TrainStep
from hpcbench.training.timing import PhaseTimes, StepTimer, gather_over_ranks

log = logging.getLogger("hpcbench")

TIMING_WARMUP_STEPS = 2  # steps per epoch left out of samples_per_s (allocator, worker start-up)
# Steps between the one host sync (and tiny all-reduce) that checks for a non-finite loss and for
# a stop signal on any rank: ranks stop together within this many steps.
SYNC_EVERY_STEPS = 20


class Diverged(HpcbenchError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int):
        super().__init__(f"training diverged in epoch {epoch} (non-finite loss); lower train.lr")
        self.epoch = epoch


@dataclass
class EpochResult:
    loss: float
    accuracy: float
    time_s: float
    samples_per_s: float = 0.0
    phases: PhaseTimes = field(default_factory=PhaseTimes)  # this rank's


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The RNG seed of one epoch on one rank: dropout and in-process augmentation depend on
    (seed, epoch, rank) alone, never on what ran before (so resumed runs need no RNG state)."""
    return (seed * 1_000_003 + epoch * 1_009 + rank) % 2**63


def _check_flags(nonfinite: torch.Tensor, stop: StopFlag, topology: Topology, epoch: int) -> None:
    """Every rank learns whether any rank saw a non-finite loss or a stop signal, and they all
    raise at this same step: nobody is left in a collective without its peers."""
    flags = torch.cat([nonfinite.double(), nonfinite.new_tensor([float(stop.requested)], dtype=torch.float64)])
    diverged, stopping = all_reduce_sum(flags, topology).tolist()
    if diverged > 0:
        raise Diverged(epoch)
    if stopping > 0:
        stop.stop(int(stopping), topology.world_size)


def train_one_epoch(step_fn: TrainStep, pipeline: DataPipeline, schedule: LearningRateSchedule, epoch: int,
                    topology: Topology, label: str, stop: StopFlag) -> EpochResult:
    step_fn.model.train()
    device, loader, timer = step_fn.device, pipeline.train_loader, step_fn.timer
    # (loss sum, correct, count) stay on the device: no .item() and no host sync per step.
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    nonfinite = torch.zeros(1, dtype=torch.float64, device=device)  # > 0 once a loss was NaN or inf
    steps = len(loader)
    progress = Progress(label, steps, enabled=topology.is_main, unit="img", unit_scale=loader.batch_size or 1)
    measured_images, measure_start = 0, None
    timer.new_epoch()
    start = time.perf_counter()
    batches = iter(loader)
    for step in range(1, steps + 1):
        timer.start(timed=step > TIMING_WARMUP_STEPS)
        images, labels = next(batches)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        timer.batch_ready()
        schedule.apply(step_fn.optimizer, epoch, step - 1)
        loss, logits = step_fn(images, labels)  # marks the end of the backward pass
        with torch.no_grad():
            # torch.full fills on the device; a tensor made from a Python number is copied there
            # from the host, which waits for the GPU's queue to drain (a sync per step).
            count = torch.full((), labels.numel(), dtype=torch.float64, device=device)
            totals += torch.stack([loss.double() * count, (logits.argmax(1) == labels).sum().double(), count])
            nonfinite += (~torch.isfinite(loss)).double()
        timer.step_done()
        if step % SYNC_EVERY_STEPS == 0 or step == steps:
            _check_flags(nonfinite, stop, topology, epoch)  # a host sync: the step marks are final now
            timer.settle()
        elif not topology.distributed and stop.requested:  # alone, a process can stop at once
            stop.stop()
        if step == TIMING_WARMUP_STEPS:
            synchronize(device)
            measure_start = time.perf_counter()
        elif step > TIMING_WARMUP_STEPS:
            measured_images += labels.numel()
        progress.update(step)
    synchronize(device)
    end = time.perf_counter()
    progress.close()
    if measure_start is None or measured_images == 0:  # fewer steps than the warm-up: use them all
        measure_start, measured_images = start, int(totals[2].item())
    rate = all_reduce_sum(torch.tensor([measured_images / (end - measure_start)], dtype=torch.float64, device=device),
                          topology)  # on the device: NCCL reduces nothing else
    loss, accuracy = _mean_loss_and_accuracy(totals, topology)
    return EpochResult(loss, accuracy, end - start, float(rate.item()), timer.times)


def _mean_loss_and_accuracy(totals: torch.Tensor, topology: Topology) -> tuple[float, float]:
    """(mean loss, accuracy) from summed (loss, correct, count) of every rank."""
    loss_sum, correct, count = all_reduce_sum(totals, topology).tolist()
    return loss_sum / max(count, 1), correct / max(count, 1)


def broadcast_buffers(model: nn.Module, topology: Topology) -> None:
    """Give every rank rank 0's BatchNorm statistics (what best.pt saves), one broadcast per dtype."""
    if not topology.distributed:
        return
    buffers = [b for b in unwrap(model).buffers() if b.numel()]
    for dtype in sorted({b.dtype for b in buffers}, key=str):  # the same order on every rank
        group = [b for b in buffers if b.dtype == dtype]
        flat = torch.cat([b.reshape(-1) for b in group])
        dist.broadcast(flat, src=0)
        for buffer, value in zip(group, torch.split(flat, [b.numel() for b in group]), strict=True):
            buffer.copy_(value.view_as(buffer))


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, topology: Topology,
             options: StepOptions = FP32) -> EpochResult:
    """Exact global test loss and accuracy of rank 0's model: every rank evaluates a disjoint
    shard with the plain module (no collective inside the loop, so an empty shard is fine), then
    the sums are all-reduced."""
    broadcast_buffers(model, topology)
    model = (unwrap(model) if topology.distributed else model).eval()
    start = time.perf_counter()
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with options.autocast(device):
            logits = model(options.prepare_input(images))
        loss_sum = nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
        count = torch.full((), labels.numel(), dtype=torch.float64, device=device)
        totals += torch.stack([loss_sum.double(), (logits.argmax(1) == labels).sum().double(), count])
    loss, accuracy = _mean_loss_and_accuracy(totals, topology)
    return EpochResult(loss, accuracy, time.perf_counter() - start)


def build_training_model(cfg: RunConfig, num_classes: int, device: torch.device, topology: Topology,
                         options: StepOptions, timer: StepTimer) -> Tuple[nn.Module, int]:
    """The model to train, and its forward FLOPs per image (the pass that checks the input size)."""
    model = build_configured_model(cfg.model, num_classes, cfg.data.image_size)
    flops = forward_flops(model, cfg.model.name, cfg.data.image_size)
    model = options.prepare_model(model.to(device))
    if topology.distributed:
        model = wrap_for_ddp(model, device, timer, options, cfg.data.image_size)
    return (torch.compile(model) if options.compile else model), flops


def fit(cfg: RunConfig, out_dir: Path, topology: Topology = SERIAL) -> RunSummary:
    """Train `cfg` and write the run directory `out_dir` (rank 0). Returns the final summary."""
    done = check_run_directory(cfg, out_dir)
    if done is not None:
        if topology.is_main:
            log.info("%s already holds a completed run (%d epochs): not training it again", out_dir, done.epochs)
        return done
    if cfg.mode.device == "cpu":  # before the record, so that env.json's torch_threads are the run's
        torch.set_num_threads(threads_per_rank(topology, cfg.mode.cpus_per_rank))
    record = RunRecord(cfg, out_dir, topology)
    try:
        device = select_device(cfg.mode.device, topology, cfg.mode.name)
        if cfg.model.pretrained:
            check_pretrained_available(cfg.model.name)  # fail before any data is read
        seed_everything(cfg.train.seed)
        torch.use_deterministic_algorithms(cfg.train.deterministic, warn_only=True)
        # Before the data: a resumed run keeps the pipeline it began with.
        checkpoint = agreed_resume_checkpoint(record.checkpoint_dir, cfg, topology) if cfg.train.resume else None
        pipeline = build_run_pipeline(cfg, device, topology, checkpoint)
        record.data_ready(pipeline)
        with stop_on_signals() as stop:
            _train_epochs(cfg, record, pipeline, device, topology, stop, checkpoint)
    except Diverged as error:
        record.summary.diverged_epoch = error.epoch
        record.finish("diverged", str(error))
        raise
    except (Interrupted, KeyboardInterrupt, SystemExit) as error:  # resumable from the last checkpoint
        record.finish("interrupted", one_line(error))
        raise
    except BaseException as error:
        alone = not topology.distributed
        record.finish("failed", one_line(error) if alone else failure_line(error, out_dir, topology.rank, topology.hosts))
        raise
    record.finish("completed")
    return record.summary


def _train_epochs(cfg: RunConfig, record: RunRecord, pipeline: DataPipeline, device: torch.device,
                  topology: Topology, stop: StopFlag, checkpoint: Optional[Dict[str, Any]]) -> None:
    options = StepOptions.resolve(cfg.train.precision, cfg.train.channels_last, cfg.train.compile, device)
    record.step_options(options, pipeline.kind)
    timer = StepTimer(device)
    model, flops = build_training_model(cfg, len(pipeline.classes), device, topology, options, timer)
    optimizer = build_optimizer(model.parameters(), cfg.train)
    step_fn = TrainStep(model, optimizer, options, device, timer)
    schedule = LearningRateSchedule.for_run(cfg, len(pipeline.train_loader))
    record.probed(probe_run(cfg, model, flops, device, topology, options), len(pipeline.train_loader))
    energy = EnergyMeter(device, reads_node_counter=topology.local_rank == 0)
    energy.start()
    first_epoch = 1
    if checkpoint is not None:
        restore_training_state(checkpoint, model, optimizer, step_fn.scaler)
        first_epoch = record.resumed(checkpoint)
    if topology.is_main:
        if pipeline.choice:
            log.info("%s", pipeline.choice)
        log.info(
            "training %s on %s (%s pipeline, %s%s, %s): %d ranks x batch %d, %d train / %d test images at %d px, "
            "epochs %d-%d", cfg.model.name, device, pipeline.kind, options.precision,
            ", channels_last" if options.channels_last else "", cfg.train.optimizer, topology.world_size,
            per_device_batch(cfg), pipeline.num_train, pipeline.num_test, cfg.data.image_size, first_epoch,
            cfg.train.epochs,
        )
    for epoch in range(first_epoch, cfg.train.epochs + 1):
        pipeline.set_epoch(epoch, cfg.train.seed)
        seed_everything(epoch_seed(cfg.train.seed, epoch, topology.rank))
        label = f"epoch {epoch}/{cfg.train.epochs}"
        trained = train_one_epoch(step_fn, pipeline, schedule, epoch, topology, label, stop)
        tested = evaluate(model, pipeline.test_loader, device, topology, options)
        per_rank = gather_over_ranks(rank_vector(trained.phases, trained.time_s), device, topology.world_size)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=trained.loss,
            train_acc=trained.accuracy,
            test_loss=tested.loss,
            test_acc=tested.accuracy,
            lr=schedule.at(epoch),
            epoch_time_s=trained.time_s + tested.time_s,
            train_time_s=trained.time_s,
            eval_time_s=tested.time_s,
            samples_per_s=trained.samples_per_s,
            peak_memory_mb=peak_memory_mb(device),
            **phase_fields(trained.phases, trained.time_s, per_rank),
        )
        record.record_epoch(metrics, model, optimizer, step_fn.scaler, pipeline.classes,
                            energy_of_all_ranks(energy, topology, device))
        # Rank 0 alone writes the metrics and checkpoints; the others wait for it in the store, so that
        # a slow write cannot trip their next collective's timeout.
        wait_for_main_rank(topology, f"epoch-{epoch}-recorded")
        if topology.is_main:
            log.info(
                "%s train_loss %.4f train_acc %.4f test_loss %.4f test_acc %.4f lr %.1e %.1fs %.1f img/s",
                label, metrics.train_loss, metrics.train_acc, metrics.test_loss, metrics.test_acc, metrics.lr,
                metrics.epoch_time_s, metrics.samples_per_s,
            )
