"""The ceilings a run is measured against, probed at its start in a few seconds (`train.probe`):

- the interconnect: all-reduce time over message sizes from 4 KB to the model's gradient size,
  on the run's own backend and ranks, as nccl-tests reports it: algorithm bandwidth
  algbw = bytes / time and bus bandwidth busbw = algbw x 2(n-1)/n (what each link carries in a
  ring), and the latency of the smallest message;
- the processor: the sustained FLOP/s of a square matrix product in the run's precision, on
  this rank's device and threads (CPU ranks sharing a node measure their share of it);
- the model: its FLOPs per training sample, 3 x the forward pass's FLOPs as
  torch.utils.flop_counter counts them on the meta device (the backward pass costs about two
  forwards; the counter's own backward count is wrong for grouped convolutions).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.distributed as dist
from torch import nn

from hpcbench.config import PartitionConfig, RunConfig, run_partition
from hpcbench.errors import ConfigError
from hpcbench.models import unwrap
from hpcbench.mpi.process_group import resolve_backend
from hpcbench.mpi.topology import Topology, threads_per_rank
from hpcbench.training.device import synchronize
from hpcbench.training.step import StepOptions

SMALLEST_MESSAGE = 4096  # bytes
MATMUL_SIZE = {"cuda": 8192, "cpu": 1024}
PROCESSOR_PROBE_S = 0.5  # measure the matrix product for about this long


@dataclass
class InterconnectProbe:
    backend: str
    ranks: int
    sizes_bytes: List[int] = field(default_factory=list)
    times_s: List[float] = field(default_factory=list)  # per all-reduce, the slowest rank's
    algbw_gbps: List[float] = field(default_factory=list)  # GB/s
    busbw_gbps: List[float] = field(default_factory=list)
    latency_s: float = 0.0  # the smallest message's time
    busbw_peak_gbps: float = 0.0  # the best bus bandwidth seen (large messages)


@dataclass
class ProcessorProbe:
    device: str
    precision: str
    matmul_size: int
    tflops: float  # sustained, per rank


def message_sizes(largest: int) -> List[int]:
    """4 KB, 64 KB, 1 MB, ... (x16), then the gradient size itself."""
    sizes, size = [], SMALLEST_MESSAGE
    while size < largest:
        sizes.append(size)
        size *= 16
    return [*sizes, max(largest, SMALLEST_MESSAGE)]


def probe_interconnect(topology: Topology, device: torch.device, backend: str, largest: int) -> InterconnectProbe:
    """Every rank runs the same all-reduces (fixed counts, never time-based: ranks must agree)."""
    probe = InterconnectProbe(backend, topology.world_size)
    factor = 2 * (topology.world_size - 1) / topology.world_size  # 0 for one rank: nothing crosses a link
    for size in message_sizes(largest):
        tensor = torch.ones(size // 4, dtype=torch.float32, device=device)
        repeats = 10 if size <= 2**20 else 4
        for _ in range(2):  # warm-up: connections, buffers
            dist.all_reduce(tensor)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            dist.all_reduce(tensor)
        synchronize(device)
        mine = torch.tensor([(time.perf_counter() - start) / repeats], dtype=torch.float64, device=device)
        dist.all_reduce(mine, op=dist.ReduceOp.MAX)  # the collective is as slow as its slowest rank
        seconds = float(mine.item())
        algbw = size / seconds / 1e9
        probe.sizes_bytes.append(size)
        probe.times_s.append(seconds)
        probe.algbw_gbps.append(algbw)
        probe.busbw_gbps.append(algbw * factor)
    probe.latency_s = probe.times_s[0]
    probe.busbw_peak_gbps = max(probe.busbw_gbps)
    return probe


def probe_processor(device: torch.device, dtype: Optional[torch.dtype], precision: str) -> ProcessorProbe:
    """The best FLOP/s of n x n matrix products over about PROCESSOR_PROBE_S seconds."""
    n = MATMUL_SIZE[device.type]
    dtype = dtype or torch.float32
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best, deadline, batch = 0.0, time.perf_counter() + PROCESSOR_PROBE_S, 1
    torch.matmul(a, b)  # warm-up: kernels, threads
    synchronize(device)
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(batch):
            torch.matmul(a, b)
        synchronize(device)
        elapsed = time.perf_counter() - start
        best = max(best, 2 * n**3 * batch / elapsed)
        batch = batch * 2 if elapsed < 0.05 else batch
    return ProcessorProbe(device.type, precision, n, best / 1e12)


def gradient_bytes(model: nn.Module) -> int:
    """What a step's all-reduce moves in: every trainable parameter's gradient."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


@dataclass
class Probes:
    """What probe.json holds; the summary's ceilings come from here."""

    grad_bytes: int
    flops_per_sample: float
    processor: Optional[ProcessorProbe] = None  # None: train.probe=false
    interconnect: Optional[InterconnectProbe] = None  # None: one rank, or train.probe=false
    nominal_peak_tflops: Optional[float] = None  # per rank, from the hardware profile
    nominal_busbw_gbps: Optional[float] = None
    seconds: float = 0.0  # what probing took


def run_probes(model: nn.Module, forward_flops: int, topology: Topology, device: torch.device, backend: str,
               options: StepOptions, partition: Optional[PartitionConfig], cores_per_rank: int,
               measure: bool) -> Probes:
    """The model's costs always (`forward_flops` of one image: models.forward_flops, counted on the
    meta device; training takes 3x); the ceilings when `measure`."""
    start = time.perf_counter()
    probes = Probes(gradient_bytes(model), 3.0 * forward_flops)
    if partition is not None and partition.peak_tflops:
        per_device = partition.peak_tflops * (cores_per_rank if device.type == "cpu" else 1)
        probes.nominal_peak_tflops = per_device
    if partition is not None:
        probes.nominal_busbw_gbps = partition.interconnect_gbps
    if measure:
        probes.processor = probe_processor(device, options.amp_dtype, options.precision)
        if topology.distributed:
            probes.interconnect = probe_interconnect(topology, device, backend, probes.grad_bytes)
    probes.seconds = time.perf_counter() - start
    return probes


def probe_run(cfg: RunConfig, model: nn.Module, forward_flops: int, device: torch.device, topology: Topology,
              options: StepOptions) -> Probes:
    """The probes of this run: its partition's nominal ceilings, its rank's cores, its backend."""
    try:
        partition: Optional[PartitionConfig] = run_partition(cfg)[1]
    except ConfigError:  # a profile without this device's partition states no nominal ceilings
        partition = None
    cores = threads_per_rank(topology, cfg.mode.cpus_per_rank) if device.type == "cpu" else 1
    return run_probes(unwrap(model), forward_flops, topology, device,
                      resolve_backend(cfg.mode.backend, cfg.mode.device), options, partition, cores, cfg.train.probe)
