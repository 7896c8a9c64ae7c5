"""Where a training step's time goes, measured: data wait, forward+backward compute, exposed
communication and the optimizer, plus the all-reduce time hidden behind the backward pass.

Each step is cut by four marks (start, batch ready, backward returned, step done) and, in a DDP
run, by the moment each gradient bucket is ready and the moment its all-reduce finished (a DDP
communication hook that performs DDP's own all-reduce and times it). On a GPU the marks are CUDA
events on the training stream (no host sync per step; they are read when the loop syncs anyway,
every trainer.SYNC_EVERY_STEPS steps); on a CPU, the wall clock.

    data          start -> batch ready (waiting for, augmenting and moving the batch)
    compute       batch ready -> the last gradient bucket ready (serial: backward returned)
    comm_exposed  last bucket ready -> backward returned: all-reduce the backward could not hide
    optimizer     backward returned -> step done (optimizer step, bookkeeping)
    comm_total    the time some bucket's all-reduce was in flight (union of its intervals)

The first four partition the step, so they add up to the loop's wall time apart from the syncs.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

import torch
import torch.distributed as dist

PHASES = ("data", "compute", "comm_exposed", "optimizer")


@dataclass
class PhaseTimes:
    """Seconds spent per phase over the steps of one epoch on one rank, and the step times'
    moments (for an interval on the run's own throughput)."""

    data: float = 0.0
    compute: float = 0.0
    comm_exposed: float = 0.0
    optimizer: float = 0.0
    comm_total: float = 0.0
    steps: int = 0
    buckets: int = 0  # gradient buckets all-reduced per step
    timed_steps: int = 0  # steps in the moments below (warm-up steps left out)
    step_mean_s: float = 0.0
    step_m2: float = 0.0  # sum of squared deviations (Welford)

    def add_step(self, parts: Tuple[float, float, float, float], comm_total: float, buckets: int,
                 timed: bool) -> None:
        self.data, self.compute, self.comm_exposed, self.optimizer = (
            total + part for total, part in zip((self.data, self.compute, self.comm_exposed, self.optimizer), parts,
                                                strict=True))
        self.comm_total += comm_total
        self.steps += 1
        self.buckets = max(self.buckets, buckets)
        if timed:
            step = sum(parts)
            self.timed_steps += 1
            delta = step - self.step_mean_s
            self.step_mean_s += delta / self.timed_steps
            self.step_m2 += delta * (step - self.step_mean_s)

    @property
    def step_std_s(self) -> float:
        return math.sqrt(self.step_m2 / (self.timed_steps - 1)) if self.timed_steps > 1 else 0.0

    def vector(self) -> List[float]:
        """What every rank contributes to the gather at the end of an epoch."""
        return [self.data, self.compute, self.comm_exposed, self.optimizer, self.comm_total]


class _Clock:
    """Marks on the wall clock (CPU: work is done when the call returns)."""

    def mark(self) -> Any:
        return time.perf_counter()

    def seconds(self, start: Any, end: Any) -> float:
        return end - start

    def wait(self) -> None:
        """Until every mark is final (a CPU's are at once)."""


class _CudaClock(_Clock):
    """Marks as CUDA events on the current stream: their times are the GPU's, read after a sync."""

    def mark(self) -> Any:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) / 1000.0

    def wait(self) -> None:
        torch.cuda.synchronize()  # all streams: the all-reduce marks sit on the communication's


@dataclass
class _Step:
    start: Any = None
    ready: Any = None
    backward: Any = None
    done: Any = None
    timed: bool = True
    buckets: List[Tuple[Any, Any]] = field(default_factory=list)  # (bucket ready, all-reduce done)


class StepTimer:
    """The marks of every step since the last `settle()`, turned into PhaseTimes there.
    Disabled, every method does nothing (the benchmark's uninstrumented recipe)."""

    def __init__(self, device: torch.device, enabled: bool = True):
        self.enabled = enabled
        self.clock = _CudaClock() if device.type == "cuda" else _Clock()
        self.pending: List[_Step] = []
        self.current = _Step()
        self.times = PhaseTimes()

    def new_epoch(self) -> None:
        self.pending, self.current, self.times = [], _Step(), PhaseTimes()

    def start(self, timed: bool = True) -> None:
        if self.enabled:
            self.current = _Step(start=self.clock.mark(), timed=timed)

    def batch_ready(self) -> None:
        if self.enabled:
            self.current.ready = self.clock.mark()

    def backward_done(self) -> None:
        if self.enabled:
            self.current.backward = self.clock.mark()

    def step_done(self) -> None:
        if self.enabled:
            self.current.done = self.clock.mark()
            self.pending.append(self.current)

    def bucket(self) -> Any:
        """A bucket's gradients are ready: called by the communication hook."""
        return self.clock.mark()

    def all_reduced(self, ready: Any) -> None:
        self.current.buckets.append((ready, self.clock.mark()))

    def settle(self) -> PhaseTimes:
        """Turn the pending marks into seconds. Call only after the device has finished them
        (the loop's periodic sync); on a CPU this costs nothing."""
        if self.pending:
            self.clock.wait()
        seconds = self.clock.seconds
        for step in self.pending:
            relative = [(seconds(step.start, ready), seconds(step.start, done)) for ready, done in step.buckets]
            ready_s, backward_s, done_s = (seconds(step.start, mark) for mark in (step.ready, step.backward, step.done))
            # Serial: the backward pass is all compute. DDP: compute ends when the last bucket is ready.
            compute_end = min(max([ready_s, *(r for r, _ in relative)]), backward_s) if relative else backward_s
            parts = (ready_s, compute_end - ready_s, backward_s - compute_end, done_s - backward_s)
            self.times.add_step(parts, _union_length(relative), len(relative), step.timed)
        self.pending = []
        return self.times


def _union_length(intervals: List[Tuple[float, float]]) -> float:
    total, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def timed_allreduce_hook(timer, bucket):  # no annotations: DDP checks them, and they would be strings here
    """DDP's own all-reduce (sum, then divide by the world size: what DDP does without a hook),
    with the moment the bucket was ready and the moment its all-reduce finished marked.
    `timer` is a StepTimer, `bucket` a dist.GradBucket; returns a Future of the reduced tensor."""
    ready = timer.bucket()
    tensor = bucket.buffer()
    tensor.div_(dist.get_world_size())
    future = dist.all_reduce(tensor, async_op=True).get_future()

    def finished(done: torch.futures.Future) -> torch.Tensor:
        # Runs when the all-reduce has finished (gloo), or on a stream that waits for it (NCCL):
        # the mark taken here is the all-reduce's end on either.
        timer.all_reduced(ready)
        return done.value()[0]

    return future.then(finished)


def gather_over_ranks(values: List[float], device: torch.device, world_size: int) -> Optional[torch.Tensor]:
    """(world_size, len(values)) from every rank; None in a serial run."""
    if world_size == 1:
        return None
    mine = torch.tensor(values, dtype=torch.float64, device=device)
    gathered = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(gathered, mine)
    return torch.stack(gathered).cpu()
