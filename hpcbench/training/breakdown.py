"""From measurements to explanations: an epoch's phases over all ranks, and the run's totals,
efficiency against its ceilings (MFU) and cost.

Per epoch every rank contributes its phase times (training/timing.py); rank 0 records their
mean (the phases of the mean rank add up to the mean step), every rank's values (to find
stragglers and slow nodes) and the straggler ratio: the slowest rank's compute over the median
rank's. A rank that computes more slowly makes the others wait in the all-reduce, so their
exposed communication grows while its compute does.
"""
from __future__ import annotations

import statistics
from typing import Any, Dict, List, Optional

import torch

from hpcbench.rundir import EpochMetrics, RunSummary
from hpcbench.training.probe import Probes
from hpcbench.training.timing import PHASES, PhaseTimes

RANK_COLUMNS = (*PHASES, "comm_total", "train")  # rank_vector's order
METRIC_NAMES = {"data": "data_time_s", "compute": "compute_time_s", "comm_exposed": "comm_exposed_s",
                "optimizer": "optimizer_time_s", "comm_total": "comm_total_s"}


def rank_vector(own: PhaseTimes, train_time_s: float) -> List[float]:
    """What every rank contributes at the end of an epoch: its phases and its own wall time."""
    return [*own.vector(), train_time_s]


def phase_fields(own: PhaseTimes, train_time_s: float, per_rank: Optional[torch.Tensor]) -> Dict[str, Any]:
    """The EpochMetrics fields of an epoch's phases; `per_rank` is (ranks, columns) or None."""
    rows = per_rank.tolist() if per_rank is not None else [rank_vector(own, train_time_s)]
    columns = {name: [row[i] for row in rows] for i, name in enumerate(RANK_COLUMNS)}
    compute = columns["compute"]
    median = statistics.median(compute)
    fields: Dict[str, Any] = {METRIC_NAMES[name]: statistics.fmean(columns[name]) for name in METRIC_NAMES}
    fields.update(steps=own.steps, grad_buckets=own.buckets, step_time_mean_s=own.step_mean_s,
                  step_time_std_s=own.step_std_s,
                  timed_steps=own.timed_steps, straggler_ratio=max(compute) / median if median > 0 else 1.0,
                  rank_times=columns if per_rank is not None else {})
    return fields


def explain(summary: RunSummary, history: List[EpochMetrics], probes: Optional[Probes]) -> None:
    """Fill the summary's totals, shares and efficiency from the epochs so far and the probes."""
    for name in (*METRIC_NAMES.values(), "eval_time_s"):
        setattr(summary, name, sum(getattr(m, name) for m in history))
    training = sum(getattr(summary, METRIC_NAMES[p]) for p in PHASES)
    ddp = summary.mode == "ddp"  # a serial run has nothing to communicate
    if training > 0 and ddp:
        summary.comm_exposed_share = summary.comm_exposed_s / training
        if summary.comm_total_s > 0:
            summary.comm_overlap_share = max(0.0, 1 - summary.comm_exposed_s / summary.comm_total_s)
    summary.straggler_ratio = max(m.straggler_ratio for m in history) if ddp else None
    if probes is None:
        return
    summary.grad_bytes, summary.flops_per_sample = probes.grad_bytes, probes.flops_per_sample
    summary.peak_tflops = probes.processor.tflops if probes.processor else None
    summary.nominal_peak_tflops = probes.nominal_peak_tflops
    if probes.interconnect is not None:
        summary.busbw_gbps = probes.interconnect.busbw_peak_gbps
        summary.allreduce_latency_s = probes.interconnect.latency_s
    summary.nominal_busbw_gbps = probes.nominal_busbw_gbps
    if summary.samples_per_s > 0:
        achieved = probes.flops_per_sample * summary.samples_per_s / summary.world_size / 1e12
        summary.achieved_tflops = achieved
        summary.mfu = achieved / summary.peak_tflops if summary.peak_tflops else None
        summary.mfu_nominal = achieved / summary.nominal_peak_tflops if summary.nominal_peak_tflops else None

