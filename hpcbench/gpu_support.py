"""Which GPU a rank trains on, and whether a torch build has kernels for a GPU: rules shared by
the ranks (at start, on the GPU itself) and the Slurm launcher (in the dry run and before
submitting, from the GPU type a hardware profile names), so that a study that cannot run on its
cluster's GPUs is refused before it spends an allocation. No torch import here: the launcher asks
the compute nodes' interpreter about its torch in a subprocess (`torch_build`).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, List, Optional, Tuple

from hpcbench.errors import ConfigError, DeviceError

Capability = Tuple[int, int]

# Compute capability of the GPU types hardware profiles name (Slurm gres types, lower case);
# a partition's `gpu_capability` covers any other name.
GPU_CAPABILITIES: Dict[str, Capability] = {
    "v100": (7, 0), "t4": (7, 5), "a100": (8, 0), "a30": (8, 0), "a10": (8, 6), "a40": (8, 6),
    "l4": (8, 9), "l40": (8, 9), "l40s": (8, 9), "h100": (9, 0), "h200": (9, 0), "gh200": (9, 0),
    "b200": (10, 0),
}

# Where a user finds a build for an older GPU: CUDA 13 wheels have no kernels below sm_75 (Volta,
# the original study's V100s, among them); the CUDA 12.6 wheels still have sm_50 .. sm_90.
OLDER_GPU_WHEELS = "https://download.pytorch.org/whl/cu126"


def gpu_index(local_rank: int, local_size: int, visible: int) -> int:
    """The CUDA device, among the `visible` ones this process sees, of the rank `local_rank` of
    `local_size` on its node. When every rank sees all of the node's GPUs, a rank's own is its
    local rank. Under per-task binding (srun --gpus-per-task=1, --gpu-bind=single|closest|map_gpu,
    or a site's default) each rank sees only its own GPU, as device 0."""
    if visible >= local_size:
        return local_rank
    if visible == 1:
        return 0
    devices = os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)")
    raise DeviceError(
        f"local rank {local_rank} of {local_size} on {socket.gethostname()} sees {visible} GPUs "
        f"(CUDA_VISIBLE_DEVICES={devices}): give every rank one GPU (srun --gpus-per-task=1) or all of the node's"
    )


def _parse_arch(flag: str) -> Optional[Tuple[str, Capability, str]]:
    """'sm_90a' -> ('sm', (9, 0), 'a'); 'compute_120' -> ('compute', (12, 0), '')."""
    kind, _, number = flag.partition("_")
    suffix = number[len(number.rstrip("af")):]
    digits = number.rstrip("af")
    if kind not in ("sm", "compute") or len(digits) < 2 or not digits.isdigit():
        return None
    return kind, (int(digits[:-1]), int(digits[-1])), suffix


def build_runs_on(arch_flags: List[str], capability: Capability) -> bool:
    """Whether kernels compiled for `arch_flags` (torch.cuda.get_arch_list()) run on a GPU of
    `capability`: a cubin (sm_XY) runs on the same major version from minor Y up (an
    architecture-specific one, sm_XYa, only on X.Y itself); PTX (compute_XY) is compiled by the
    driver for any capability from X.Y up."""
    for flag in arch_flags:
        parsed = _parse_arch(flag)
        if parsed is None:
            continue
        kind, built, suffix = parsed
        if kind == "compute" and built <= capability:
            return True
        if kind == "sm" and (built == capability or (not suffix and built[0] == capability[0] and built[1] <= capability[1])):
            return True
    return False


@dataclass(frozen=True)
class TorchBuild:
    version: str
    cuda: Optional[str]  # None: a CPU-only build
    arch_flags: Tuple[str, ...]

    def problem_on(self, capability: Capability, gpu: str) -> Optional[str]:
        """One line saying why this build cannot train on `gpu`, with the fix; None if it can."""
        sm = f"sm_{capability[0]}{capability[1]}"
        if self.cuda is None:
            return (f"torch {self.version} is a CPU-only build and cannot use the {gpu} ({sm}): install a CUDA "
                    f"build (pip install torch torchvision --index-url https://download.pytorch.org/whl/cu1XX)")
        if build_runs_on(list(self.arch_flags), capability):
            return None
        return (f"torch {self.version} (CUDA {self.cuda}) has no kernels for the {gpu} ({sm}; it has "
                f"{' '.join(self.arch_flags) or 'none'}): install a build that lists {sm}, e.g. "
                f"pip install torch torchvision --index-url {OLDER_GPU_WHEELS}")


def this_torch_build() -> TorchBuild:
    """The build of the torch this process imports; its kernel list is known without a GPU."""
    import torch

    flags = torch._C._cuda_getArchFlags() if torch.version.cuda and hasattr(torch._C, "_cuda_getArchFlags") else ""
    return TorchBuild(torch.__version__, torch.version.cuda, tuple((flags or "").split()))


def check_device_runs(capability: Capability, name: str) -> None:
    """At start, on the GPU itself: refuse a torch build without kernels for it."""
    problem = this_torch_build().problem_on(capability, name)
    if problem is not None:
        raise DeviceError(f"{problem} (on {socket.gethostname()})")


_REPORT_BUILD = ("import json, torch; f = getattr(torch._C, '_cuda_getArchFlags', None); "
                 "print(json.dumps([torch.__version__, torch.version.cuda, (f() if torch.version.cuda and f else '') or '']))")


@lru_cache(maxsize=None)
def torch_build(python: str) -> TorchBuild:
    """The torch build of the interpreter `python` (the one the compute nodes run)."""
    if python == sys.executable:
        return this_torch_build()
    try:
        result = subprocess.run([python, "-c", _REPORT_BUILD], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as error:
        raise ConfigError(f"hardware.python={python} cannot be run here ({error}); name the compute nodes' "
                          f"interpreter by a path this host shares with them") from None
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"hardware.python={python} cannot import torch ({last}); install hpcbench into that environment")
    version, cuda, flags = json.loads(result.stdout.strip().splitlines()[-1])
    return TorchBuild(version, cuda, tuple(flags.split()))


def profile_capability(gpu_type: Optional[str], gpu_capability: Optional[str]) -> Optional[Capability]:
    """A partition's GPU capability: its `gpu_capability` ("7.0"), else its gres type's from the
    table above; None when neither says (nothing to check)."""
    if gpu_capability:
        major, _, minor = str(gpu_capability).partition(".")
        if not (major.isdigit() and minor.isdigit()):
            raise ConfigError(f"gpu_capability={gpu_capability!r} is not of the form 7.0")
        return int(major), int(minor)
    return GPU_CAPABILITIES.get((gpu_type or "").lower())


def main() -> None:
    """`python -m hpcbench.gpu_support`, one line per process (e.g. every srun task): the GPU it
    would train on from what it sees, without touching a GPU. The test cluster's placeholder GPUs
    (tests/cluster/cluster.sh) are checked with it against real Slurm binding."""
    from hpcbench.cli import one_line_errors
    from hpcbench.mpi.topology import init_mpi, mpi_topology

    with one_line_errors("hpcbench.gpu_support"):
        topology = mpi_topology(init_mpi().COMM_WORLD.Get_size())
        devices = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
        index = gpu_index(topology.local_rank, topology.local_size, len(devices))
    print(json.dumps({"rank": topology.rank, "host": socket.gethostname(), "local_rank": topology.local_rank,
                      "visible": devices, "cuda_index": index, "gpu": devices[index]}), flush=True)


if __name__ == "__main__":
    main()
