"""A sweep's jobs as Slurm job arrays the cluster accepts: one array per distinct request, split
where it would exceed the cluster's MaxArraySize (sbatch refuses such an array whole: "Invalid
job array specification"), with the sweep's array_parallelism shared between the parts."""
from __future__ import annotations

import logging
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Dict, Generic, List, Optional, TypeVar

from hpcbench.slurm.resources import SlurmRequest

log = logging.getLogger("hpcbench")

SLURM_DEFAULT_MAX_ARRAY_SIZE = 1001  # slurm.conf's default: array indices 0-1000
Job = TypeVar("Job")


@dataclass(frozen=True)
class JobArray(Generic[Job]):
    request: SlurmRequest  # what every job of the array asks for
    jobs: List[Job]
    parallelism: int  # at most this many of its jobs run at once (sbatch --array=...%N)


def max_array_size() -> int:
    """The cluster's MaxArraySize (an array's indices must be below it): `scontrol show config`,
    Slurm's default where there is no controller to ask (a dry run on a laptop)."""
    if shutil.which("scontrol") is None:
        return SLURM_DEFAULT_MAX_ARRAY_SIZE
    try:
        config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30,
                                check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return SLURM_DEFAULT_MAX_ARRAY_SIZE
    found = re.search(r"^MaxArraySize\s*=\s*(\d+)", config, re.MULTILINE)
    return int(found.group(1)) if found else SLURM_DEFAULT_MAX_ARRAY_SIZE


def plan_arrays(groups: Dict[SlurmRequest, List[Job]], parallelism: int,
                max_size: Optional[int] = None) -> List[JobArray[Job]]:
    """One array per request, split into parts of at most `max_size` jobs (the cluster's
    MaxArraySize when None). `parallelism` bounds the running jobs of the whole sweep, not of each
    array: it is shared out, the smallest arrays first, none given more than its jobs or less
    than 1."""
    max_size = max_array_size() if max_size is None else max_size
    parts = [(request, jobs[start:start + max_size]) for request, jobs in groups.items()
             for start in range(0, len(jobs), max_size)]
    if len(parts) > len(groups):
        log.info("%d job(s) in %d arrays: this cluster's MaxArraySize is %d", sum(map(len, groups.values())),
                 len(parts), max_size)
    shares, left = {}, parallelism
    by_size = sorted(range(len(parts)), key=lambda i: len(parts[i][1]))
    for done, i in enumerate(by_size):
        shares[i] = min(len(parts[i][1]), max(1, left // (len(parts) - done)))
        left -= shares[i]
    return [JobArray(request, jobs, shares[i]) for i, (request, jobs) in enumerate(parts)]
