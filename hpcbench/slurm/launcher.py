"""A sweep on Slurm: plan every job (its own config -> its own resources), refuse what the
hardware cannot hold, then submit one job array per distinct request (split where the cluster's
MaxArraySize would refuse it: slurm/arrays.py), follow them and report.

Called by the `hydra/launcher=slurm` plugin (hydra_plugins/hpcbench_slurm_launcher), for any
Hydra application: a job of hpcbench's own apps derives its request from its config, other apps'
jobs take the launcher's resource keys; keys set explicitly override either.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from hpcbench.errors import HpcbenchError
from hpcbench.failure_records import failed_run_cause
from hpcbench.rundir import RunDirectory, read_summary
from hpcbench.slurm.arrays import JobArray, plan_arrays
from hpcbench.slurm.compose import SweepComposer
from hpcbench.slurm.job import HydraSlurmJob
from hpcbench.slurm.manifest import Manifest, ManifestJob
from hpcbench.slurm.monitor import category, stderr_tail, wait_for
from hpcbench.slurm.nodes import check_nodes_available
from hpcbench.slurm.packing import Allocation, plan_allocations
from hpcbench.slurm.packing import describe as describe_packing
from hpcbench.slurm.planning import PlannedJob, SweepPlanner
from hpcbench.slurm.quota import check_submit_quota
from hpcbench.slurm.resources import SlurmRequest
from hpcbench.slurm.sbatch import check_script_values, sbatch_script

log = logging.getLogger("hpcbench")


@dataclass
class LauncherOptions:
    dry_run: bool
    wait: bool
    poll_interval_s: float
    name: str
    signal_delay_s: int
    max_num_timeout: int
    array_parallelism: int
    runs_per_allocation: int
    resources: Dict[str, Any]  # hydra.launcher's resource keys; None: not set


class SlurmSweepError(HpcbenchError):
    """One or more jobs of the sweep failed."""


def group_by_request(allocations: List[Allocation]) -> Dict[SlurmRequest, List[Allocation]]:
    """Allocations with identical requests go into one job array."""
    groups: Dict[SlurmRequest, List[Allocation]] = {}
    for allocation in allocations:
        groups.setdefault(allocation.request, []).append(allocation)
    return groups


@dataclass
class Placed:
    """A run of the sweep where it was submitted: its allocation's Slurm job, its slot there."""

    job: PlannedJob
    handle: Any  # submitit's Job of the allocation
    slot: Optional[int]  # packed: the srun task that runs it; None: the allocation is the run's own

    @property
    def task(self) -> Any:
        return self.handle if self.slot is None else self.handle.task(self.slot)


def _job_return(job: PlannedJob, status: JobStatus, value: Any) -> JobReturn:
    result = JobReturn(overrides=job.overrides, working_dir=str(job.run_dir), task_name="hpcbench")
    result.status = status
    result.return_value = value
    return result


def why_failed(placed: Placed, outcome_error: Optional[str] = None) -> str:
    """The run's own one-line error (for DDP: the rank that failed first) with where its log is;
    what its packed slot saw, or the tail of the job's stderr, when the run could not say (it
    never started, it was killed)."""
    job, task = placed.job, placed.task
    error = None
    if job.run_dir.is_dir():  # a DDP run's ranks may have stopped before rank 0 could write the summary
        error = read_summary(job.run_dir).get("error") or failed_run_cause(
            job.run_dir, job.request.nodes * job.request.tasks_per_node)
    error = error or outcome_error
    if error:
        return f"{error} (log: {task.paths.stderr})"
    return "stderr tail:\n" + stderr_tail(task)


def print_dry_run(arrays: List[JobArray[Allocation]], folder: Path, options: LauncherOptions) -> None:
    """Each array once (its request and sbatch script), then its runs a line each: readable for a
    sweep of one run and of a thousand."""
    out = sys.stdout
    runs = sum(len(allocation.jobs) for array in arrays for allocation in array.jobs)
    allocations = sum(len(array.jobs) for array in arrays)
    out.write(f"Dry run: {runs} run(s) in {allocations} Slurm job(s), {len(arrays)} array(s); nothing is submitted.\n")
    for number, array in enumerate(arrays, 1):
        request, allocations_of = array.request, array.jobs
        script = sbatch_script(request, options.name, folder, len(allocations_of) if len(allocations_of) > 1 else None,
                               options.signal_delay_s, parallelism=array.parallelism)
        out.write(f"\nArray {number} of {len(arrays)}: {len(allocations_of)} job(s), at most {array.parallelism} at once\n"
                  f"  resources: {request.describe()}\n  python:    {request.python or sys.executable}\n")
        if request.gpu_binding():
            out.write(f"  GPU binding: {request.gpu_binding()}\n")
        for index, allocation in enumerate(allocations_of):
            if allocation.packed:
                out.write(f"  job {index}: {describe_packing(allocation)} (each: {allocation.jobs[0].request.describe()})\n")
                out.write("".join(f"    slot {allocation.slot_of(i)}: {job.label}  ({job.run_dir})\n"
                                  for i, job in enumerate(allocation.jobs)))
            else:
                job = allocation.jobs[0]
                out.write(f"  job {index}: {job.label}  ({job.run_dir})\n")
        out.write("  sbatch script:\n" + "".join(f"    {line}\n" for line in script.splitlines()))
    out.flush()


class SlurmSweep:
    def __init__(self, options: LauncherOptions, hydra_context: HydraContext, task_function: TaskFunction,
                 config: DictConfig):
        self.options, self.task_function, self.config = options, task_function, config
        # Every job is composed twice before submission (the sweeper checks it, plan_job derives its
        # request): the sweep's context gets a loader that composes each choice of config groups once.
        # The jobs keep Hydra's own loader: they compose one config each, on their node.
        self.job_context = HydraContext(config_loader=hydra_context.config_loader, callbacks=hydra_context.callbacks)
        self.composer = SweepComposer(hydra_context.config_loader)
        hydra_context.config_loader = self.composer  # type: ignore[assignment]  # the sweeper holds this context
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self.folder = self.sweep_dir / ".submitit" / "%j"

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> List[JobReturn]:
        planner = SweepPlanner(self.composer, self.config, self.options.resources)
        planned = [planner.plan(initial_job_idx + i, overrides)  # every job checked before any is submitted
                   for i, overrides in enumerate(job_overrides)]
        allocations = plan_allocations(planned, self.options.runs_per_allocation)
        groups = group_by_request(allocations)
        for request in groups:
            check_script_values(request, self.options.name, self.folder)
        arrays = plan_arrays(groups, self.options.array_parallelism)
        if self.options.dry_run:
            print_dry_run(arrays, self.folder, self.options)
            return [_job_return(job, JobStatus.COMPLETED, None) for job in planned]
        for request, allocations_of in groups.items():  # nodes down or drained now: said before anything is submitted
            check_nodes_available(f"job {allocations_of[0].jobs[0].label}", request.partition, request.nodes)
        check_submit_quota(len(allocations))  # and a sweep larger than the user's MaxSubmitJobs
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        placed = self._submit(arrays)
        manifest = Manifest(str(self.sweep_dir), datetime.now().isoformat(timespec="seconds"),
                            [ManifestJob(p.job.num, p.job.overrides, str(p.job.run_dir), p.handle.job_id,
                                         p.job.request.as_dict(), slot=p.slot) for p in placed])
        manifest.write()
        if not self.options.wait:
            log.info("submitted %d run(s) in %d Slurm job(s); follow them with: hpcbench-status %s", len(placed),
                     len(allocations), self.sweep_dir)
            return [_job_return(p.job, JobStatus.COMPLETED, None) for p in placed]
        handles = list({p.handle.job_id: p.handle for p in placed}.values())
        states = wait_for(handles, self.options.poll_interval_s)
        return self._results(placed, states, manifest)

    def _submit(self, arrays: List[JobArray[Allocation]]) -> List[Placed]:
        import submitit  # lazy: Hydra imports launcher plugins at every start

        callable_job = HydraSlurmJob(self.job_context, self.task_function, self.config)
        placed = []
        for array in arrays:
            request, allocations = array.request, array.jobs
            executor = submitit.SlurmExecutor(folder=self.folder, max_num_timeout=self.options.max_num_timeout,
                                              python=request.python)
            parameters = request.sbatch_parameters(self.options.name)
            if self.options.max_num_timeout == 0:
                # No requeues asked for: Slurm must not requeue after a node failure either (its
                # JobRequeue default), or the launcher would report a failure that later resumes.
                parameters["additional_parameters"] = {**parameters.get("additional_parameters", {}),
                                                       "no_requeue": True}
            executor.update_parameters(signal_delay_s=self.options.signal_delay_s,
                                       array_parallelism=array.parallelism, **parameters)
            handles = executor.map_array(
                callable_job, [[(job.overrides, job.num, str(job.run_dir)) for job in a.jobs] for a in allocations],
                [a.slots for a in allocations], [Singleton.get_state()] * len(allocations))
            for allocation, handle in zip(allocations, handles, strict=True):
                for index, job in enumerate(allocation.jobs):
                    slot = allocation.slot_of(index)
                    where = f" slot {slot}" if allocation.packed else ""
                    log.info("%s -> Slurm job %s%s (%s)", job.label, handle.job_id, where, job.request.describe())
                    placed.append(Placed(job, handle, slot))
        return sorted(placed, key=lambda p: p.job.num)  # the sweep's order, as Hydra's returns

    def _results(self, placed: List[Placed], states: Dict[str, str], manifest: Manifest) -> List[JobReturn]:
        returns, failures = [], []
        slot_outcomes: Dict[Tuple[str, int], Dict[int, Any]] = {}  # each slot's result file read once
        for run, entry in zip(placed, manifest.jobs, strict=True):
            job, handle = run.job, run.handle
            allocation_state = states[handle.job_id]
            result, error = self._outcome(run, allocation_state, slot_outcomes)
            if error is None:
                entry.state = "COMPLETED"
                returns.append(result)
                continue
            entry.state = allocation_state if category(allocation_state) == "failed" else "FAILED"
            where = f"Slurm job {handle.job_id}" + (f" slot {run.slot}" if run.slot is not None else "")
            entry.error = f"{where} {entry.state}"
            failures.append(f"{job.label}: {where} ended {entry.state}: " + why_failed(run, error or None))
            if job.run_dir.is_dir():
                RunDirectory(job.run_dir).mark_failed_if_running(entry.error)
            returns.append(_job_return(job, JobStatus.FAILED, SlurmSweepError(
                f"{job.label}: {entry.error} (all jobs: hpcbench-status {self.sweep_dir})")))
        manifest.write()
        for failure in failures:  # on stderr whatever Hydra's logging config says
            sys.stderr.write(f"FAILED {failure}\n")
        return returns

    @staticmethod
    def _outcome(run: Placed, allocation_state: str,
                 slot_outcomes: Dict[Tuple[str, int], Dict[int, Any]]) -> Tuple[Any, Optional[str]]:
        """(the run's JobReturn, None) or (None, why it has none: "" where only its logs say)."""
        task = run.task
        if run.slot is None:
            if category(allocation_state) == "done" and task.exception() is None:
                return task.results()[0], None
            return None, ""
        key = (run.handle.job_id, run.slot)
        if key not in slot_outcomes:  # the slot itself failed: none of its runs told it anything
            slot_outcomes[key] = {} if task.exception() is not None else {o.num: o for o in task.result()}
        outcome = slot_outcomes[key].get(run.job.num)
        if outcome is None:
            return None, ""
        return (outcome.result, None) if outcome.error is None else (None, outcome.error)
