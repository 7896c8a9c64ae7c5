"""What a run cost: device-hours always, energy where the machine exposes a counter.

- Device-hours: GPU-hours for GPU runs (GPUs x wall hours), core-hours for CPU runs (cores
  the ranks were given x wall hours).
- Energy: NVML's total-energy counter of each rank's GPU (nvidia-ml-py), else RAPL's package
  counters under /sys/class/powercap when readable (read by one rank per node: a package
  counter holds every process on it, so on a shared node it is an upper bound). Otherwise the
  energy is recorded as unavailable with the reason: never estimated.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch

from hpcbench.mpi.process_group import all_reduce_sum
from hpcbench.mpi.topology import Topology

POWERCAP = Path("/sys/class/powercap")


@dataclass
class EnergyReading:
    joules: Optional[float]  # None: unavailable
    source: str  # nvml | rapl | why it is unavailable


def _nvml_reader(device: torch.device) -> Tuple[Optional[Callable[[], float]], str]:
    try:
        import pynvml
    except ImportError:
        return None, "unavailable: nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
        # By UUID: NVML numbers every GPU of the node, CUDA only the visible ones (CUDA_VISIBLE_DEVICES).
        uuid = str(getattr(torch.cuda.get_device_properties(device), "uuid", ""))
        handle = (pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}") if uuid
                  else pynvml.nvmlDeviceGetHandleByIndex(device.index or 0))
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # millijoules since the driver loaded
    except pynvml.NVMLError as error:
        return None, f"unavailable: NVML has no energy counter here ({error})"
    return (lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0), "nvml"


def _rapl_files() -> List[Path]:
    """The package-level counters (intel-rapl:N/energy_uj), not their sub-zones."""
    return sorted(p for p in POWERCAP.glob("intel-rapl:*/energy_uj") if p.parent.name.count(":") == 1)


def _rapl_reader() -> Tuple[Optional[Callable[[], float]], str]:
    files = _rapl_files()
    if not files:
        return None, f"unavailable: no RAPL counter under {POWERCAP}"
    try:
        ranges = [int((f.parent / "max_energy_range_uj").read_text()) for f in files]
        [int(f.read_text()) for f in files]
    except (OSError, ValueError) as error:
        return None, f"unavailable: RAPL counters are not readable ({error})"

    def read() -> float:
        return sum(int(f.read_text()) for f in files) / 1e6

    read.ranges_j = sum(ranges) / 1e6  # type: ignore[attr-defined]
    return read, "rapl"


class EnergyMeter:
    """Joules between start() and stop() on this rank (0 on ranks that do not read a counter)."""

    def __init__(self, device: torch.device, reads_node_counter: bool):
        if device.type == "cuda":
            self.read, self.source = _nvml_reader(device)
        elif reads_node_counter:
            self.read, self.source = _rapl_reader()
        else:  # another rank of this node reads the package counters
            self.read, self.source = (lambda: 0.0), "rapl"
        self.started: Optional[float] = None

    def start(self) -> None:
        self.started = self.read() if self.read else None

    def stop(self) -> EnergyReading:
        if self.read is None or self.started is None:
            return EnergyReading(None, self.source)
        used = self.read() - self.started
        if used < 0:  # a RAPL counter wrapped around once
            used += getattr(self.read, "ranges_j", 0.0)
        return EnergyReading(used, self.source)


def device_hours(device: str, ranks: int, cores_per_rank: int, seconds: float) -> Tuple[float, str]:
    """(hours, unit): GPU-hours on GPUs, core-hours on CPUs."""
    if device == "cuda":
        return ranks * seconds / 3600, "GPU-hours"
    return ranks * cores_per_rank * seconds / 3600, "core-hours"


def energy_of_all_ranks(meter: EnergyMeter, topology: Topology, device: torch.device) -> EnergyReading:
    """This attempt's joules summed over the ranks; unavailable when any rank has no counter."""
    reading = meter.stop()
    mine = torch.tensor([reading.joules if reading.joules is not None else float("nan")], dtype=torch.float64,
                        device=device)
    total = float(all_reduce_sum(mine, topology).item())  # NaN when any rank has no counter
    return EnergyReading(None if total != total else total, reading.source)
