"""How much memory this job may use on its node: the least of the node's physical RAM, the memory
limit of the control group the process runs in (what the kernel enforces: Slurm's task/cgroup,
a container), and what Slurm granted the job (`--mem`: SLURM_MEM_PER_NODE; `--mem-per-cpu`:
SLURM_MEM_PER_CPU x the job's CPUs on the node). A 1-GPU job given 64 GB of a 512 GB node that
sized its data for 512 GB would be killed by the OOM killer in its first epoch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Mapping, Optional, Tuple

from hpcbench.packed_share import packed_share

MIB = 2**20
UNLIMITED = 2**60  # cgroup v1 writes "no limit" as 9223372036854771712; anything this large is none


def readable(size: float) -> str:
    """Bytes for a log line: GiB from 1 GiB on, else MiB."""
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


@dataclass(frozen=True)
class MemoryLimit:
    bytes: int
    source: str  # what set it, for the log line that names the pipeline chosen

    def describe(self) -> str:
        return f"{readable(self.bytes)} ({self.source})"


def physical_memory() -> MemoryLimit:
    return MemoryLimit(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "the node's RAM")


def slurm_limits(environ: Mapping[str, str]) -> List[MemoryLimit]:
    """What Slurm granted the job on this node; 0 means "all of the node's memory" to Slurm. A run
    packed with others into one allocation has its share of it (slurm/packing.py)."""
    limits = []
    share = packed_share(environ)
    if share is not None and share.memory_mb:
        limits.append(MemoryLimit(share.memory_mb * MIB, f"this run's share of packed Slurm job {share.slurm_job} "
                                                         f"({share.slots} runs side by side)"))
    per_node = _positive_int(environ.get("SLURM_MEM_PER_NODE"))
    if per_node:
        limits.append(MemoryLimit(per_node * MIB, f"Slurm's --mem, SLURM_MEM_PER_NODE={per_node} MB"))
    per_cpu, cpus = _positive_int(environ.get("SLURM_MEM_PER_CPU")), _positive_int(environ.get("SLURM_CPUS_ON_NODE"))
    if per_cpu and cpus:
        limits.append(MemoryLimit(per_cpu * cpus * MIB,
                                  f"Slurm's --mem-per-cpu, SLURM_MEM_PER_CPU={per_cpu} MB x {cpus} CPUs"))
    return limits


def _positive_int(text: Optional[str]) -> int:
    try:
        return max(int(text or 0), 0)
    except ValueError:  # e.g. "4000?" from a hand-set variable: not a limit we can read
        return 0


def _mounts() -> Iterator[Tuple[str, str, str, str]]:
    """(hierarchy root, mount point, file system type, super options) of every mount."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    for line in lines:
        fields = line.split()
        if " - " not in line or len(fields) < 10:
            continue
        after = fields[fields.index("-") + 1:]
        yield fields[3], fields[4], after[0], after[2] if len(after) > 2 else ""


def _cgroup_dirs() -> Iterator[Tuple[Path, Path, str]]:
    """(this process's cgroup directory, the hierarchy's mount point, the limit file's name) for
    the cgroup v2 hierarchy and the v1 memory controller, where mounted."""
    try:
        entries = [line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().splitlines()]
    except OSError:
        return
    paths = {("v2" if hierarchy == "0" and not controllers else "v1" if "memory" in controllers.split(",") else ""): path
             for hierarchy, controllers, path in entries}
    for root, mount_point, fs_type, options in _mounts():
        if fs_type == "cgroup2" and "v2" in paths:
            version, limit_file = "v2", "memory.max"
        elif fs_type == "cgroup" and "memory" in options.split(",") and "v1" in paths:
            version, limit_file = "v1", "memory.limit_in_bytes"
        else:
            continue
        path = paths[version]
        # The mount shows the hierarchy from `root` on (a container sees its own cgroup as "/").
        relative = os.path.relpath(path, root) if path.startswith(root) else path.lstrip("/")
        yield Path(mount_point) / relative, Path(mount_point), limit_file


def cgroup_limit() -> Optional[MemoryLimit]:
    """The tightest memory limit of this process's cgroup and its ancestors, if any is set."""
    tightest: Optional[MemoryLimit] = None
    for directory, mount_point, limit_file in _cgroup_dirs():
        while True:
            try:
                text = (directory / limit_file).read_text().strip()
            except OSError:
                text = "max"
            if text != "max" and int(text) < UNLIMITED and (tightest is None or int(text) < tightest.bytes):
                tightest = MemoryLimit(int(text), f"the cgroup limit {directory / limit_file}")
            if directory == mount_point or directory == directory.parent:
                break
            directory = directory.parent
    return tightest


def job_memory(environ: Mapping[str, str] = os.environ) -> MemoryLimit:
    """The least of the limits above: what this job may hold in host memory on this node."""
    candidates = [physical_memory(), *slurm_limits(environ)]
    cgroup = cgroup_limit()
    if cgroup is not None:
        candidates.append(cgroup)
    return min(candidates, key=lambda limit: limit.bytes)
