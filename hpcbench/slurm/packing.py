"""Packing: several small runs of a sweep in one Slurm allocation (hydra.launcher.runs_per_allocation).

A cluster queues and caps jobs, not runs: 500 five-minute CPU runs submitted as 500 jobs wait in
the queue 500 times and run into MaxSubmitJobs. Runs that ask for the same one-node, one-task
request (mode=cpu, mode=gpu) are packed up to N to an allocation. The allocation holds as many
"slots" side by side as its node takes (each slot one srun task with the run's cores, GPU and
memory, bound to them), and each slot runs its share of the runs one after another, each run in
a process of its own (slurm/job.py: PackedSlot), so that each keeps its own run directory, log,
result and failure; a requeued allocation resumes each of its runs from its own checkpoint.

DDP runs (several tasks, an MPI world) and runs of two requests are never packed together.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Dict, List, Optional

from hpcbench.config import PartitionConfig
from hpcbench.errors import ConfigError
from hpcbench.slurm.planning import PlannedJob
from hpcbench.slurm.resources import SlurmRequest


@dataclass(frozen=True)
class Allocation:
    """One Slurm job of the sweep: a lone run (every task of it runs that run: the ranks of a DDP
    run), or `slots` side-by-side tasks that run `jobs` between them."""

    request: SlurmRequest  # what the allocation asks for
    jobs: List[PlannedJob]
    slots: int = 0  # 0: not packed

    @property
    def packed(self) -> bool:
        return self.slots > 0

    def slot_jobs(self, slot: int) -> List[PlannedJob]:
        """The runs of one slot, in order: dealt round, so the first `slots` runs start at once."""
        return self.jobs[slot::self.slots] if self.packed else self.jobs

    @property
    def in_turn(self) -> int:
        """The most runs one slot runs one after another."""
        return in_turn(len(self.jobs), self.slots)

    def slot_of(self, index: int) -> Optional[int]:
        return index % self.slots if self.packed else None


def in_turn(runs: int, slots: int) -> int:
    return math.ceil(runs / slots)


def can_pack(request: SlurmRequest) -> bool:
    """One node, one task, no MPI: a run that shares nothing with other tasks."""
    return request.nodes == 1 and request.tasks_per_node == 1 and not request.srun_args


def plan_allocations(jobs: List[PlannedJob], runs_per_allocation: int) -> List[Allocation]:
    """The sweep's allocations, in job order: alike packable runs `runs_per_allocation` to one,
    every other run alone."""
    if runs_per_allocation < 1:
        raise ConfigError(f"hydra.launcher.runs_per_allocation={runs_per_allocation}: give 1 (a Slurm job per run) "
                          f"or more (runs packed into one allocation)")
    if runs_per_allocation == 1:
        return [Allocation(job.request, [job]) for job in jobs]
    alike: Dict[SlurmRequest, List[PlannedJob]] = {}
    allocations = []
    for job in jobs:
        if can_pack(job.request):
            alike.setdefault(job.request, []).append(job)
        else:
            allocations.append(Allocation(job.request, [job]))
    for group in alike.values():
        for start in range(0, len(group), runs_per_allocation):
            allocations.append(_pack(group[start:start + runs_per_allocation], runs_per_allocation))
    return sorted(allocations, key=lambda allocation: allocation.jobs[0].num)


def slots_that_fit(request: SlurmRequest, partition: Optional[PartitionConfig], runs: int) -> int:
    """How many runs of `request` one node of `partition` holds side by side (cores, GPUs and
    memory each); all of them where the partition is not known (another app's jobs: the
    launcher's keys are the whole story and Slurm itself refuses what no node holds)."""
    if partition is None:
        return runs
    fits = [partition.cores_per_node // (request.cpus_per_task or 1)]
    if request.gpus_per_node:
        fits.append(partition.gpus_per_node // request.gpus_per_node)
    if request.mem_gb:
        fits.append(partition.memory_gb // request.mem_gb)
    return max(1, min(runs, *fits))


def _pack(jobs: List[PlannedJob], runs_per_allocation: int) -> Allocation:
    run, partition = jobs[0].request, jobs[0].partition
    slots = slots_that_fit(run, partition, len(jobs))
    turns = in_turn(len(jobs), slots)  # runs one after another in a slot
    timeout = run.timeout_min * turns
    if partition is not None and timeout > partition.time_limit_min:
        most = slots * max(1, partition.time_limit_min // run.timeout_min)
        raise ConfigError(
            f"hydra.launcher.runs_per_allocation={runs_per_allocation}: a node of partition {run.partition} holds "
            f"{slots} of these runs side by side, so {turns} run one after another, {turns} x {run.timeout_min} "
            f"min, past the partition's {partition.time_limit_min} min limit; use runs_per_allocation={most} "
            f"or lower hardware.time_limit_min")
    gres = None
    if run.gres:  # gpu:v100:1 -> gpu:v100:<slots>
        kind, _, count = run.gres.rpartition(":")
        gres = f"{kind}:{int(count) * slots}" if count.isdigit() else run.gres
    # srun binds each slot to its own cores (and its own GPU): neighbours must not disturb a
    # run's timing. A cluster without a task plugin ignores it; the slot binds itself then.
    binding = ("--cpu-bind=cores", *(("--gpus-per-task=1",) if run.gpus_per_node or run.gres else ()))
    request = replace(run, tasks_per_node=slots, gpus_per_node=run.gpus_per_node * slots, gres=gres,
                      mem_gb=run.mem_gb * slots if run.mem_gb else None, timeout_min=timeout, srun_args=binding)
    return Allocation(request, jobs, slots)


def describe(allocation: Allocation) -> str:
    if not allocation.packed:
        return ""
    return (f"{len(allocation.jobs)} runs packed: {allocation.slots} side by side, up to {allocation.in_turn} one after "
            f"another in each slot")
