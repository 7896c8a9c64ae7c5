"""What runs inside a Slurm job: one Hydra job of the sweep in every srun task of it, or, in a
packed allocation (slurm/packing.py), each task a slot that runs its share of the runs.

A DDP job has one srun task per rank; every task runs its job, so all ranks form one MPI world
(srun --mpi=...) and rank 0 alone writes Hydra's files and the run directory.
"""
from __future__ import annotations

import sys
from typing import Any, Dict, List

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from hpcbench.slurm.slot import SlotRun, leave_without_a_result, run_slot
from hpcbench.training.signals import Interrupted

# Ranks other than 0 log warnings to their stderr only (Slurm's .err file of that task).
QUIET_LOGGING = {"version": 1, "root": {"level": "WARNING", "handlers": ["console"]},
                 "handlers": {"console": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}},
                 "disable_existing_loggers": False}


class HydraSlurmJob:
    """Pickled by submitit and called on the cluster with one allocation's runs."""

    def __init__(self, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig):
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config
        # What the app's runs import (hpcbench.train: torch, the trainer), for a packed slot to
        # import once before it forks them. Looked up here, where the app's module is loaded (as
        # __main__ too, under `python -m`); the job's process has submitit's __main__.
        self.preload = tuple(getattr(sys.modules.get(task_function.__module__), "PACKED_RUN_IMPORTS", ()))

    def __call__(self, runs: List[SlotRun], slots: int, singleton_state: Dict[type, Singleton]) -> Any:
        """`slots` 0: one run, in every task (a DDP run's ranks); its JobReturn. Else task k runs
        runs[k::slots]: a list of slot.RunOutcome."""
        import submitit  # lazy: Hydra imports launcher plugins at every start

        environment = submitit.JobEnvironment()
        Singleton.set_state(singleton_state)
        setup_globals()
        if not slots:
            [(overrides, num, _)] = runs
            try:
                return self.run(overrides, num, environment.job_id, rank_zero=environment.global_rank == 0)
            except Exception as error:
                # Stopped by a signal and checkpointed (a DDP rank's Interrupted is the cause of its RankFailed)
                stopped = next((e for e in (error, error.__cause__) if isinstance(e, Interrupted)), None)
                if stopped is None:
                    raise
                leave_without_a_result(stopped.signal_name)
        slot = environment.global_rank
        return run_slot(lambda overrides, num: self.run(overrides, num, environment.job_id, rank_zero=True),
                        runs[slot::slots], slot, slots, len(runs), environment.job_id, self.preload)

    def run(self, overrides: List[str], job_num: int, job_id: str, rank_zero: bool) -> JobReturn:
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config.hydra):
            config.hydra.job.id = job_id
            config.hydra.job.num = job_num
            if not rank_zero:
                config.hydra.output_subdir = None
                config.hydra.job_logging = OmegaConf.create(QUIET_LOGGING)
        result = run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=config,
                         job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        if result.status == JobStatus.FAILED:
            raise result._return_value  # the task fails, so Slurm records the job as FAILED
        return result

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on a time limit or preemption: requeue this job with its arguments."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)
