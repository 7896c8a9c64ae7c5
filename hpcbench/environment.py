"""What a run ran on: hardware, software versions, the project's git state and Slurm variables."""
from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torchvision

import hpcbench
from hpcbench.mpi.topology import library_name
from hpcbench.packed_share import packed_share

PROJECT_ROOT = Path(hpcbench.__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> Optional[str]:
    if not (PROJECT_ROOT / ".git").exists():  # an installed wheel: site-packages may sit in another repo
        return None
    try:
        result = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


def git_state() -> Dict[str, Any]:
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def mpi_library() -> Optional[str]:
    """The MPI library of an MPI run; None for runs that never started MPI (importing mpi4py
    would initialise MPI in a serial run just to report it)."""
    mpi = sys.modules.get("mpi4py.MPI")
    return library_name(mpi.Get_library_version()) if mpi else None


# The variables that choose how ranks and GPUs talk (NCCL's interfaces and error handling, MPI's
# netmod and GPU support, the GPUs a process sees): recorded, as they change what a run measures.
COMMUNICATION_PREFIXES = ("NCCL_", "TORCH_NCCL_", "GLOO_", "MPIR_CVAR_", "OMPI_MCA_", "UCX_", "CUDA_VISIBLE_DEVICES")


def collect_environment() -> Dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_cores_machine": os.cpu_count(),
        "cpu_cores_available": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "mpi": mpi_library(),
        "hpcbench": hpcbench.__version__,
        "git": git_state(),
        "command": sys.argv,
        "slurm": {k: v for k, v in sorted(os.environ.items()) if k.startswith("SLURM_")},
        "packed": asdict(share) if (share := packed_share()) else None,  # sharing a Slurm job with other runs
        "communication": {k: v for k, v in sorted(os.environ.items()) if k.startswith(COMMUNICATION_PREFIXES)},
    }
