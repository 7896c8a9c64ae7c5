"""A sweep as MLflow's parent run: a Hydra callback (tracking=mlflow adds it to hydra.callbacks)
that creates the parent run in the process that starts the sweep, before any job runs, and hands
its id to the jobs through the environment (live.PARENT_RUN_ENV): local jobs inherit it, Slurm
jobs get it through sbatch's exported environment. Jobs on many nodes therefore never race to
create it.

Its status: FINISHED at the end of a sweep that Hydra ends (every job succeeded); FAILED when the
sweep's process exits without that end (Hydra calls on_multirun_end only after a sweep without
failures); left RUNNING by a sweep submitted without waiting (hydra.launcher.wait=false), for
`hpcbench-report --mlflow` to end once its runs have ended."""
from __future__ import annotations

import atexit
import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from hpcbench.tracking.live import PARENT_RUN_ENV, first_line

log = logging.getLogger("hpcbench")


def _experiment(config: DictConfig) -> str:
    return config.tracking.experiment or config.experiment_name


class MlflowSweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.tracking.name != "mlflow" or config.tracking.offline:
            return
        from hpcbench.tracking.mlflow_run import connect, experiment_id, sweep_parent

        try:
            client = connect(config.tracking.uri)
            parent = sweep_parent(client, experiment_id(client, _experiment(config)), Path(config.hydra.sweep.dir))
        except Exception as error:  # the tracker never stops a sweep
            log.warning("MLflow tracking at %s failed (%s): the sweep's runs will have no parent run",
                        config.tracking.uri, first_line(error))
            return
        os.environ[PARENT_RUN_ENV] = parent
        atexit.register(_fail_if_left_open, config.tracking.uri, parent)
        log.info("MLflow: sweep %s is parent run %s at %s", config.hydra.sweep.dir, parent, config.tracking.uri)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        parent = os.environ.pop(PARENT_RUN_ENV, None)
        if parent is None:
            return
        if OmegaConf.select(config, "hydra.launcher.wait", default=True) is False:
            log.info("MLflow: parent run %s stays RUNNING while its jobs run; `hpcbench-report %s --mlflow %s` "
                     "ends it once they have", parent, config.hydra.sweep.dir, config.tracking.uri)
            return
        _end_parent(config.tracking.uri, parent, "FINISHED")


def _fail_if_left_open(uri: str, parent: str) -> None:
    """At the exit of the sweep's process: a sweep that Hydra did not end had a failure."""
    if os.environ.pop(PARENT_RUN_ENV, None) == parent:
        _end_parent(uri, parent, "FAILED")


def _end_parent(uri: str, parent: str, status: str) -> None:
    from hpcbench.tracking.mlflow_run import connect

    try:
        connect(uri).set_terminated(parent, status)
    except Exception as error:  # the tracker never fails a sweep
        log.warning("MLflow: could not end the sweep's parent run %s (%s)", parent, first_line(error))
