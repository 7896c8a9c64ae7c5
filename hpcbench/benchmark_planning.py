"""How long a sweep takes to plan before its first sbatch: a dry run of a grid of 5 models x 2
batch sizes x seeds on hydra/launcher=slurm, whole (`hpcbench-train -m ...`, a new process: Hydra's
start, the sweeper's check of every job, the launcher's planning, the printed plan), at 100 and
1,000 jobs; and, side by side in one process, a job planned the way Hydra alone would (composed by
the sweeper and again by the launcher, each time the whole defaults tree) and the way the launcher
plans it (slurm/compose.py, slurm/planning.py). Medians of --repeats; needs no cluster.

    python -m hpcbench.benchmark_planning [--jobs 100,1000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Optional

from hpcbench.environment import cpu_model

MODELS = "mobilenet_v2,resnet18,resnet50,efficientnet_b0,vit_b_16"
BATCH_SIZES = "global_64,per_device_32"


def grid(jobs: int, sweep_dir: Path) -> List[str]:
    """`hpcbench-train -m` arguments of a dry run of `jobs` jobs (a multiple of 10)."""
    return ["hydra/launcher=slurm", "hydra.launcher.dry_run=true", "hardware=ci_cluster", "mode=cpu",
            f"model={MODELS}", f"batch_size={BATCH_SIZES}", f"train.seed=range(0,{jobs // 10})",
            f"hydra.sweep.dir={sweep_dir}"]


def dry_run_seconds(jobs: int, work: Path) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "hpcbench.train", "-m", *grid(jobs, work / "sweep")], cwd=work,
                            capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0 or f"Dry run: {jobs} run(s)" not in result.stdout:
        raise SystemExit(f"the dry run of {jobs} jobs failed: {result.stderr.strip().splitlines()[-1:]}")
    return elapsed


def per_job_seconds(plan: Callable[[int, List[str]], object], jobs: List[List[str]]) -> float:
    start = time.perf_counter()
    for num, overrides in enumerate(jobs):
        plan(num, overrides)
    return (time.perf_counter() - start) / len(jobs)


def side_by_side(jobs: int, repeats: int, work: Path) -> None:
    """Per job, in this process: Hydra's composition twice + the request, against the planner."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from hpcbench.config_load import register_schemas
    from hpcbench.resolvers import register_resolvers
    from hpcbench.slurm.compose import SweepComposer
    from hpcbench.slurm.planning import SweepPlanner
    from hpcbench.train import CONFIG_DIR

    register_resolvers()
    register_schemas()
    overrides = [[f"model={model}", f"batch_size={batch}", f"train.seed={seed}", "hardware=ci_cluster", "mode=cpu"]
                 for model in MODELS.split(",")[:2] for batch in BATCH_SIZES.split(",") for seed in range(jobs // 4)]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().hydra.config_loader  # type: ignore[union-attr]
        master = loader.load_configuration("hpcbench", [f"hydra.sweep.dir={work / 'sweep'}"], RunMode.MULTIRUN)

        def hydra_alone(num: int, job: List[str]) -> object:
            loader.load_sweep_config(master, job)  # the sweeper's check
            return SweepPlanner(_Uncached(loader), master, {})._whole(num, job)  # the launcher's composition

        def launcher(num: int, job: List[str]) -> object:
            composer.load_sweep_config(master, job)  # the sweeper's check, through the shared loader
            return planner.plan(num, job)

        before, after = [], []
        for _ in range(repeats):
            before.append(per_job_seconds(hydra_alone, overrides))
            composer = SweepComposer(loader)
            planner = SweepPlanner(composer, master, {})
            after.append(per_job_seconds(launcher, overrides))
    b, a = statistics.median(before), statistics.median(after)
    print(f"per job ({len(overrides)} jobs, 4 choices of groups, median of {repeats}): Hydra alone {b * 1e3:.0f} ms, "
          f"hpcbench {a * 1e3:.1f} ms: {b / a:.1f}x")


class _Uncached:
    """Hydra's loader as the launcher's composer, composing every job whole (the baseline)."""

    def __init__(self, loader: object) -> None:
        self.loader = loader

    def load_sweep_config(self, master: object, overrides: List[str]) -> object:
        return self.loader.load_sweep_config(master, overrides)  # type: ignore[attr-defined]

    def composition(self, master: object, overrides: List[str]) -> None:
        return None


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hpcbench.benchmark_planning", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", default="100,1000", help="dry runs of these many jobs (multiples of 10)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="hpcbench-planning-") as tmp:
        work = Path(tmp)
        side_by_side(40, args.repeats, work)
        for jobs in (int(n) for n in args.jobs.split(",")):
            times = [dry_run_seconds(jobs, work) for _ in range(args.repeats)]
            print(f"dry run of {jobs:5d} jobs (whole command, median of {args.repeats}): "
                  f"{statistics.median(times):6.1f} s, {statistics.median(times) / jobs * 1e3:5.1f} ms a job")


if __name__ == "__main__":
    main()
