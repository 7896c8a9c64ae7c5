"""The record of one run in its directory: config, environment, the summary as it evolves, the
metrics of every epoch and the checkpoints. Only rank 0 writes (the others keep the same state,
so any rank can decide what the record says).
"""
from __future__ import annotations

import logging
import socket
import statistics
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from hpcbench.config import RunConfig, global_batch, per_device_batch
from hpcbench.data.sampling import DataPipeline
from hpcbench.environment import collect_environment
from hpcbench.mpi.topology import Topology, threads_per_rank
from hpcbench.rundir import (
    BEST,
    CHECKPOINTS,
    LAST,
    PREVIOUS,
    PROBE,
    EpochMetrics,
    RunDirectory,
    RunSummary,
)
from hpcbench.tracking.live import start_tracking
from hpcbench.training.breakdown import explain
from hpcbench.training.checkpoint import resumable_state, weights_state
from hpcbench.training.cost import EnergyReading, device_hours
from hpcbench.training.probe import Probes
from hpcbench.training.step import StepOptions

log = logging.getLogger("hpcbench")


class RunRecord:
    """State and bookkeeping of one training run: summary, metrics, checkpoints, resume."""

    def __init__(self, cfg: RunConfig, out_dir: Path, topology: Topology):
        """Write the config, environment and a `running` summary before anything can fail, so
        every failure after this point is recorded in summary.json."""
        self.cfg, self.topology = cfg, topology
        self.run_dir = RunDirectory(out_dir) if topology.is_main else None
        self.checkpoint_dir = Path(out_dir) / CHECKPOINTS
        self.history: List[EpochMetrics] = []
        self.probes: Optional[Probes] = None
        self.started = time.perf_counter()
        self.elapsed_before_s = 0.0  # work done by earlier attempts of this run
        self.energy_before_j: Optional[float] = 0.0  # their energy (None: not measured then)
        self.summary = RunSummary(
            status="running",
            mode=cfg.mode.name,
            device=cfg.mode.device,
            world_size=topology.world_size,
            nodes=topology.nodes,
            ranks_per_node=topology.local_size,
            model=cfg.model.name,
            dataset=cfg.data.name,
            image_size=cfg.data.image_size,
            scaling=cfg.batch_size.scaling,
            batch_per_device=per_device_batch(cfg),
            global_batch=global_batch(cfg),
            epochs_planned=cfg.train.epochs,
            started_at=datetime.now().isoformat(timespec="seconds"),
            hostname=socket.gethostname(),
        )
        self.tracker = start_tracking(cfg, out_dir if topology.is_main else None)
        if self.run_dir is not None:
            self.run_dir.write_config(cfg)
            self.run_dir.write_json("env.json", {**collect_environment(), "rank_hosts": list(topology.hosts),
                                                 "store_address": topology.store_address})
            self.write()

    def write(self) -> None:
        if self.run_dir is not None:
            self.run_dir.write_summary(self.summary)
            self.tracker.changed()

    def data_ready(self, pipeline: DataPipeline) -> None:
        self.summary.train_images, self.summary.test_images = pipeline.num_train, pipeline.num_test
        self.summary.classes = pipeline.classes
        self.summary.data_digest = pipeline.digest
        self.write()

    def step_options(self, options: StepOptions, pipeline: str) -> None:
        self.summary.pipeline, self.summary.precision = pipeline, options.precision
        self.summary.channels_last, self.summary.compiled = options.channels_last, options.compile
        self.write()

    def probed(self, probes: Probes, steps_per_epoch: int) -> None:
        """The ceilings and the model's costs (probe.json), before the first epoch."""
        self.probes = probes
        self.summary.steps_per_epoch = steps_per_epoch
        self.summary.cores_per_rank = threads_per_rank(self.topology, self.cfg.mode.cpus_per_rank)
        self._update_summary()
        if self.run_dir is not None:
            self.run_dir.write_json(PROBE, asdict(probes))
            self.write()
            if probes.processor is not None:
                interconnect = probes.interconnect
                log.info("probed in %.1fs: %.2f TFLOP/s per rank (%s matmul)%s; %.2f GFLOP per training image, "
                         "%.1f MB of gradients", probes.seconds, probes.processor.tflops, probes.processor.precision,
                         f", all-reduce bus bandwidth {interconnect.busbw_peak_gbps:.2f} GB/s, latency "
                         f"{interconnect.latency_s * 1e6:.0f} us" if interconnect else "",
                         probes.flops_per_sample / 1e9, probes.grad_bytes / 1e6)

    def resumed(self, checkpoint: Dict[str, Any]) -> int:
        """Take over the history of `checkpoint`; returns the first epoch still to train."""
        self.history = [EpochMetrics(**m) for m in checkpoint["history"]]
        self.elapsed_before_s = checkpoint["elapsed_s"]
        self.energy_before_j = checkpoint.get("energy_j")
        self.summary.restarts = checkpoint["restarts"] + 1
        self.summary.resumed_from_epochs = [*checkpoint["resumed_from_epochs"], checkpoint["epoch"]]
        self._update_summary()
        self.write()
        if self.topology.is_main:
            log.info("resuming after epoch %d from %s (restart %d)", checkpoint["epoch"],
                     self.checkpoint_dir / f"{LAST}.pt", self.summary.restarts)
        return checkpoint["epoch"] + 1

    def _update_summary(self) -> None:
        summary, history = self.summary, self.history
        if not history:
            return
        best = max(history, key=lambda m: (m.test_acc, -m.epoch))
        last = history[-1]
        summary.epochs = last.epoch
        summary.total_time_s = self.elapsed_before_s + time.perf_counter() - self.started
        summary.train_time_s = sum(m.train_time_s for m in history)
        # Steady state: the first epoch carries one-off costs (cuDNN's algorithm search, allocator
        # growth, compilation) and is left out when there are more.
        summary.samples_per_s = statistics.median(m.samples_per_s for m in (history[1:] or history))
        summary.final_test_acc, summary.final_test_loss = last.test_acc, last.test_loss
        summary.peak_memory_mb = max(m.peak_memory_mb for m in history)
        summary.best_test_acc, summary.best_epoch = best.test_acc, best.epoch
        summary.grad_buckets = max(m.grad_buckets for m in history)
        explain(summary, history, self.probes)
        summary.device_hours, summary.device_hours_unit = device_hours(
            summary.device, summary.world_size, summary.cores_per_rank, summary.total_time_s)

    def record_epoch(self, metrics: EpochMetrics, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scaler: Optional[torch.amp.GradScaler], classes: List[str], energy: EnergyReading) -> None:
        previous_best = self.summary.best_test_acc
        self.history.append(metrics)
        self.summary.energy_source = energy.source
        known = energy.joules is not None and self.energy_before_j is not None
        self.summary.energy_j = self.energy_before_j + energy.joules if known else None
        self._update_summary()
        if self.run_dir is None:
            return
        self.run_dir.write_metrics(self.history)
        if self.cfg.train.save_checkpoints:
            weights = weights_state(model, metrics.epoch, metrics.test_acc, classes, self.cfg)
            resumable = resumable_state(weights, optimizer, scaler, self.history, self.summary.total_time_s,
                                        self.summary.restarts, self.summary.resumed_from_epochs,
                                        self.summary.energy_j, self.summary.pipeline)
            self.run_dir.save_checkpoint(LAST, resumable, previous=PREVIOUS)
            if previous_best is None or metrics.test_acc > previous_best:
                self.run_dir.save_checkpoint(BEST, weights)
        self.write()

    def finish(self, status: str, error: Optional[str] = None) -> None:
        self.summary.status, self.summary.error = status, error
        self.summary.finished_at = datetime.now().isoformat(timespec="seconds")
        if status == "completed" and self.run_dir is not None:
            self.run_dir.prune_checkpoints(self.cfg.train.keep_checkpoints)
        self.write()
        self.tracker.close()
