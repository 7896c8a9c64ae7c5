"""The device a process trains on, and what is measured on it (peak memory, synchronisation
before a clock is read)."""
from __future__ import annotations

import resource
import socket

import torch

from hpcbench.errors import DeviceError
from hpcbench.mpi.topology import Topology


def select_device(device: str, topology: Topology, mode: str = "") -> torch.device:
    """cpu, or the CUDA device of this process's local rank (one rank per GPU)."""
    if device != "cuda":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"mode={mode or device} needs a CUDA device, but none is visible on {socket.gethostname()} "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); use mode=cpu or run on a GPU node"
        )
    if topology.local_rank >= torch.cuda.device_count():
        raise DeviceError(
            f"rank {topology.rank} is local rank {topology.local_rank} but this node has "
            f"{torch.cuda.device_count()} GPU(s): start at most one rank per GPU"
        )
    torch.cuda.set_device(topology.local_rank)
    return torch.device("cuda", topology.local_rank)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work: GPU kernels run asynchronously, so a host clock read
    without this measures the launch, not the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    """GPU: the most memory tensors held; CPU: the process's maximum resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
