"""The device a process trains on, and what is measured on it (peak memory, synchronisation
before a clock is read)."""
from __future__ import annotations

import resource
import socket

import torch

from hpcbench.errors import DeviceError
from hpcbench.gpu_support import check_device_runs, gpu_index
from hpcbench.mpi.topology import Topology


def select_device(device: str, topology: Topology, mode: str = "") -> torch.device:
    """cpu, or this rank's own GPU (one rank per GPU, under any GPU binding: gpu_support.gpu_index),
    after checking that this torch build has kernels for it."""
    if device != "cuda":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"mode={mode or device} needs a CUDA device, but none is visible on {socket.gethostname()} "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); use mode=cpu or run on a GPU node"
        )
    index = gpu_index(topology.local_rank, topology.local_size, torch.cuda.device_count())
    check_device_runs(torch.cuda.get_device_capability(index), torch.cuda.get_device_name(index))
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


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
