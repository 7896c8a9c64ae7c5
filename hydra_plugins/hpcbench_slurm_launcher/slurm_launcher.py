"""`hydra/launcher=slurm`: submits each job of a sweep to Slurm with the resources its own config
needs (see hpcbench/slurm/). Hydra imports this module at every start: keep it light, import
torch and submitit lazily (and no `from __future__ import annotations`: dataclasses of a module
Hydra imports during plugin discovery must resolve their field types at once)."""

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class SlurmLauncherConf:
    _target_: str = "hydra_plugins.hpcbench_slurm_launcher.slurm_launcher.SlurmLauncher"
    dry_run: bool = False  # print each job's overrides, resources and sbatch script; submit nothing
    wait: bool = True  # follow the jobs to the end; false: submit, write manifest.json and return
    max_requeues: int = 3  # requeues after a time limit or preemption (the job checkpoints first)
    poll_interval_s: float = 5.0
    signal_delay_s: int = 90  # Slurm signals the job this long before its time limit
    array_parallelism: int = 256
    job_name: str = "hpcbench"


ConfigStore.instance().store(group="hydra/launcher", name="slurm", node=SlurmLauncherConf, provider="hpcbench")


class SlurmLauncher(Launcher):
    def __init__(self, **params: Any) -> None:
        self.params = params
        self.sweep: Optional[Any] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hpcbench.slurm.launcher import LauncherOptions, SlurmSweep

        options = LauncherOptions(**{k: v for k, v in self.params.items() if k != "_target_"})
        self.sweep = SlurmSweep(options, hydra_context, task_function, config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.sweep is not None, "setup() first"
        return self.sweep.launch(job_overrides, initial_job_idx)
