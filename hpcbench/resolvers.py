"""OmegaConf resolvers the configs use (`${hpcbench.NAME:}`), registered before Hydra composes."""
from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

RUN_STAMP_ENV = "HPCBENCH_RUN_STAMP"


def run_stamp() -> str:
    """The start time of this launch, to the microsecond. All ranks of an `mpiexec -n N
    hpcbench-train` launch get rank 0's stamp through the environment (see cli.py)."""
    return os.environ.get(RUN_STAMP_ENV) or datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")


def cwd() -> str:
    """The directory hpcbench-train was started in. (Hydra's `${hydra:runtime.cwd}` is not set
    yet when a multirun resolves its sweep directory.)"""
    return os.getcwd()


def cpu_count() -> int:
    """Cores this process may use (its affinity mask, not the whole machine)."""
    return len(os.sched_getaffinity(0))


def cuda_device_count() -> int:
    # Without a GPU driver (neither NVIDIA's nor ROCm's) torch could see no device: say so without
    # importing torch, a second of every config check on a CPU machine.
    if not (Path("/proc/driver/nvidia").exists() or Path("/dev/kfd").exists()):
        return 0
    import torch  # lazy: composing a config must not pay for torch unless a profile asks

    return torch.cuda.device_count()


def local_accelerator() -> str:
    """cuda where this machine has a GPU, else cpu: what mode=ddp ranks use on hardware=local."""
    return "cuda" if cuda_device_count() > 0 else "cpu"


def memory_gb() -> int:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return max(1, pages // 2**30)


def register_resolvers() -> None:
    # use_cache: every read of a stamp within one config gives the same value.
    OmegaConf.register_new_resolver("hpcbench.run_stamp", run_stamp, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("hpcbench.cwd", cwd, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("hpcbench.cpu_count", cpu_count, replace=True)
    OmegaConf.register_new_resolver("hpcbench.cuda_device_count", cuda_device_count, replace=True)
    OmegaConf.register_new_resolver("hpcbench.local_accelerator", local_accelerator, replace=True)
    OmegaConf.register_new_resolver("hpcbench.memory_gb", memory_gb, replace=True)
