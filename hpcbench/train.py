"""hpcbench-train: the Hydra application (`python -m hpcbench.train`, `-m` for sweeps).

    hpcbench-train                                    # serial CPU run, synthetic data
    hpcbench-train mode=ddp mode.ranks=2              # 2 MPI ranks on this machine
    hpcbench-train -m experiment=quickstart           # the offline demo sweep
    hpcbench-train --models                           # the torchvision architectures model.name takes
    mpiexec -n 2 hpcbench-train mode=ddp mode.ranks=2 # ranks started by you
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from hpcbench.cli import fail, one_line_errors, run_hydra_app
from hpcbench.config import RunConfig
from hpcbench.config_load import register_schemas, to_run_config
from hpcbench.mpi.topology import launched_by_mpi, slurm_step_tasks
from hpcbench.resolvers import RUN_STAMP_ENV, register_resolvers, run_stamp

# An absolute path: Hydra reads a relative one as a Python package when run as an entry point.
CONFIG_DIR = Path(__file__).resolve().parent / "conf"  # shipped inside the package (package data)

register_resolvers()
register_schemas()

# What each run of a packed Slurm job imports, for its slot to import once before forking the runs
# (slurm/slot.py): seconds a run. None of them starts a thread at import.
PACKED_RUN_IMPORTS = ("torch", "hpcbench.training.trainer")


def run_job(run: RunConfig, out_dir: Path) -> Optional[float]:
    """Run one job of a run or sweep in `out_dir`; returns its best test accuracy."""
    # Imports here, each where it is needed: composing configs (and --help) stays fast, and the
    # process that only starts the DDP ranks never imports torch (seconds before every rank starts).
    if run.mode.name != "ddp":
        from hpcbench.training.trainer import fit

        return fit(run, out_dir).best_test_acc
    if launched_by_mpi() or slurm_step_tasks() > 1:
        from hpcbench.training.rank import train_rank

        summary = train_rank(run, out_dir)
        return summary.best_test_acc if summary else None
    from hpcbench.mpi.launch import launch_ranks
    from hpcbench.rundir import read_summary
    from hpcbench.training.continuation import check_run_directory

    done = check_run_directory(run, out_dir)  # before the launch writes anything there
    if done is not None:
        return done.best_test_acc
    launch_ranks(run, out_dir)
    return read_summary(out_dir).get("best_test_acc")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="hpcbench")
def hydra_main(cfg: DictConfig) -> Optional[float]:
    hydra_cfg = HydraConfig.get()
    # A single run reports its own errors in one line. In a multirun they propagate, so Hydra
    # names the failed job's overrides and the other jobs still run.
    if hydra_cfg.mode == RunMode.RUN:
        with one_line_errors("hpcbench-train"):
            return run_job(to_run_config(cfg), Path(hydra_cfg.runtime.output_dir))
    return run_job(to_run_config(cfg), Path(hydra_cfg.runtime.output_dir))


def _agree_on_run_directory() -> None:
    """Under `mpiexec -n N hpcbench-train`, every rank runs Hydra: give them rank 0's run stamp
    (so one run directory) and keep Hydra's files and logs to rank 0."""
    from hpcbench.mpi.topology import bcast, init_mpi

    if "-m" in sys.argv or "--multirun" in sys.argv:
        fail("hpcbench-train", "a multirun cannot be started under MPI; start it without mpiexec", 2)
    os.environ[RUN_STAMP_ENV] = bcast(run_stamp())
    if init_mpi().COMM_WORLD.Get_rank() != 0:
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]


def list_models() -> None:
    from hpcbench.model_names import architecture_names

    names = architecture_names()
    print(f"model.name takes any of these {len(names)} torchvision classifiers (or use model._target_ for your own):")
    print("\n".join(f"  {name}" for name in names))


def main() -> None:
    if sys.argv[1:] == ["--models"]:
        return list_models()
    if launched_by_mpi():
        _agree_on_run_directory()
    run_hydra_app(hydra_main, "hpcbench-train")


if __name__ == "__main__":
    main()
