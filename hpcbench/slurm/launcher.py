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
from typing import Any, Dict, List, Sequence

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
    resources: Dict[str, Any]  # hydra.launcher's resource keys; None: not set


class SlurmSweepError(HpcbenchError):
    """One or more jobs of the sweep failed."""


def group_by_request(jobs: List[PlannedJob]) -> Dict[SlurmRequest, List[PlannedJob]]:
    """Jobs with identical requests go into one job array."""
    groups: Dict[SlurmRequest, List[PlannedJob]] = {}
    for job in jobs:
        groups.setdefault(job.request, []).append(job)
    return groups


def _job_return(job: PlannedJob, status: JobStatus, value: Any) -> JobReturn:
    result = JobReturn(overrides=job.overrides, working_dir=str(job.run_dir), task_name="hpcbench")
    result.status = status
    result.return_value = value
    return result


def why_failed(job: PlannedJob, handle: Any) -> str:
    """The run's own one-line error (for DDP: the rank that failed first) with where its log is;
    the tail of the job's stderr when the run could not say (it never started, it was killed)."""
    error = None
    if job.run_dir.is_dir():  # a DDP run's ranks may have stopped before rank 0 could write the summary
        error = read_summary(job.run_dir).get("error") or failed_run_cause(
            job.run_dir, job.request.nodes * job.request.tasks_per_node)
    if error:
        return f"{error} (log: {handle.paths.stderr})"
    return "stderr tail:\n" + stderr_tail(handle)


def print_dry_run(arrays: List[JobArray[PlannedJob]], folder: Path, options: LauncherOptions) -> None:
    """Each array once (its request and sbatch script), then its jobs a line each: readable for a
    sweep of one job and of a thousand."""
    out = sys.stdout
    out.write(f"Dry run: {sum(len(a.jobs) for a in arrays)} job(s) in {len(arrays)} array(s); nothing is submitted.\n")
    for number, array in enumerate(arrays, 1):
        request, jobs = array.request, array.jobs
        script = sbatch_script(request, options.name, folder, len(jobs) if len(jobs) > 1 else None,
                               options.signal_delay_s, parallelism=array.parallelism)
        out.write(f"\nArray {number} of {len(arrays)}: {len(jobs)} job(s), at most {array.parallelism} at once\n"
                  f"  resources: {request.describe()}\n  python:    {request.python or sys.executable}\n")
        if request.gpu_binding():
            out.write(f"  GPU binding: {request.gpu_binding()}\n")
        out.write("  jobs (run directory):\n" + "".join(f"    {job.label}  ({job.run_dir})\n" for job in jobs))
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
        groups = group_by_request(planned)
        for request in groups:
            check_script_values(request, self.options.name, self.folder)
        arrays = plan_arrays(groups, self.options.array_parallelism)
        if self.options.dry_run:
            print_dry_run(arrays, self.folder, self.options)
            return [_job_return(job, JobStatus.COMPLETED, None) for job in planned]
        for request, jobs in groups.items():  # nodes down or drained now: said before anything is submitted
            check_nodes_available(f"job {jobs[0].label}", request.partition, request.nodes)
        check_submit_quota(len(planned))  # and a sweep larger than the user's MaxSubmitJobs
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        submitted = self._submit(arrays)
        manifest = Manifest(str(self.sweep_dir), datetime.now().isoformat(timespec="seconds"),
                            [ManifestJob(job.num, job.overrides, str(job.run_dir), handle.job_id, job.request.as_dict())
                             for job, handle in submitted])
        manifest.write()
        if not self.options.wait:
            log.info("submitted %d job(s); follow them with: hpcbench-status %s", len(submitted), self.sweep_dir)
            return [_job_return(job, JobStatus.COMPLETED, None) for job, _ in submitted]
        states = wait_for([handle for _, handle in submitted], self.options.poll_interval_s)
        return self._results(submitted, states, manifest)

    def _submit(self, arrays: List[JobArray[PlannedJob]]) -> List[tuple]:
        import submitit  # lazy: Hydra imports launcher plugins at every start

        callable_job = HydraSlurmJob(self.job_context, self.task_function, self.config)
        submitted = []
        for array in arrays:
            request, jobs = array.request, array.jobs
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
            handles = executor.map_array(callable_job, [job.overrides for job in jobs], [job.num for job in jobs],
                                         [Singleton.get_state()] * len(jobs))
            for job, handle in zip(jobs, handles, strict=True):
                log.info("%s -> Slurm job %s (%s)", job.label, handle.job_id, request.describe())
                submitted.append((job, handle))
        return submitted

    def _results(self, submitted: List[tuple], states: Dict[str, str], manifest: Manifest) -> List[JobReturn]:
        returns, failures = [], []
        for (job, handle), entry in zip(submitted, manifest.jobs, strict=True):
            entry.state = states[handle.job_id]
            error = handle.exception() if category(entry.state) == "done" else None
            if category(entry.state) == "done" and error is None:
                returns.append(handle.results()[0])
                continue
            entry.error = f"Slurm job {handle.job_id} {entry.state}"
            failures.append(f"{job.label}: Slurm job {handle.job_id} ended {entry.state}: " + why_failed(job, handle))
            if job.run_dir.is_dir():
                RunDirectory(job.run_dir).mark_failed_if_running(entry.error)
            returns.append(_job_return(job, JobStatus.FAILED, SlurmSweepError(
                f"{job.label}: {entry.error} (all jobs: hpcbench-status {self.sweep_dir})")))
        manifest.write()
        for failure in failures:  # on stderr whatever Hydra's logging config says
            sys.stderr.write(f"FAILED {failure}\n")
        return returns
