"""`hydra/launcher=slurm`: submits each job of a sweep to Slurm with the resources its own config
needs (see hpcbench/slurm/). Works for any Hydra application: jobs of hpcbench's own apps derive
their resources from their config (mode x hardware x batch); other apps take them from the keys
below, named as hydra-submitit-launcher names them, so switching from it is one override. A key
set explicitly overrides what a job's config derives. Hydra imports this module at every start:
keep it light, import torch and submitit lazily (and no `from __future__ import annotations`:
dataclasses of a module Hydra imports during plugin discovery must resolve their field types at
once)."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

# The resource keys: None means "derive it" (hpcbench apps) or the default below (other apps).
RESOURCE_KEYS = ("partition", "nodes", "tasks_per_node", "cpus_per_task", "gpus_per_node", "gres", "mem_gb",
                 "timeout_min", "account", "qos", "constraint", "comment", "exclude", "setup", "srun_args",
                 "additional_parameters")


@dataclass
class SlurmLauncherConf:
    _target_: str = "hydra_plugins.hpcbench_slurm_launcher.slurm_launcher.SlurmLauncher"
    # How the sweep runs
    dry_run: bool = False  # print each job's overrides, resources and sbatch script; submit nothing
    wait: bool = True  # follow the jobs to the end; false: submit, write manifest.json and return
    poll_interval_s: float = 5.0
    # Resources (other apps: nodes 1, tasks_per_node 1, timeout_min 60, the cluster's defaults else)
    partition: Optional[str] = None
    nodes: Optional[int] = None
    tasks_per_node: Optional[int] = None
    cpus_per_task: Optional[int] = None
    gpus_per_node: Optional[int] = None
    gres: Optional[str] = None
    mem_gb: Optional[int] = None
    timeout_min: Optional[int] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    comment: Optional[str] = None
    exclude: Optional[str] = None
    setup: Optional[List[str]] = None  # shell lines before the job (module load, ...)
    srun_args: Optional[List[str]] = None  # e.g. [--mpi=pmi2]
    additional_parameters: Dict[str, Any] = field(default_factory=dict)  # any other sbatch option
    # Slurm behaviour
    name: str = "${hydra.job.name}"  # the job name
    signal_delay_s: int = 90  # Slurm signals the job this long before its time limit
    max_num_timeout: int = 3  # requeues after a time limit or preemption (the job checkpoints first); 0: never requeued
    array_parallelism: int = 256  # at most this many of the sweep's jobs run at once (shared between its arrays)
    # Packing (hpcbench/slurm/packing.py): up to this many alike one-task runs (mode=cpu, mode=gpu)
    # share one Slurm job, side by side on their own cores, in turn where the node holds fewer;
    # each keeps its own run directory, result and failure. 1: every run its own Slurm job.
    runs_per_allocation: int = 1


ConfigStore.instance().store(group="hydra/launcher", name="slurm", node=SlurmLauncherConf, provider="hpcbench")


class SlurmLauncher(Launcher):
    def __init__(self, **params: Any) -> None:
        self.params = params
        self.sweep: Optional[Any] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hpcbench.slurm.launcher import LauncherOptions, SlurmSweep

        resources = {key: self.params.get(key) for key in RESOURCE_KEYS}
        options = LauncherOptions(**{k: v for k, v in self.params.items() if k != "_target_" and k not in resources},
                                  resources=resources)
        self.sweep = SlurmSweep(options, hydra_context, task_function, config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.sweep is not None, "setup() first"
        return self.sweep.launch(job_overrides, initial_job_idx)
