"""How long `hpcbench-report` takes for many run directories (the whole command, as a user runs it).

    python -m hpcbench.report.benchmark                      # 1,000 copies of one tiny run, 3 repeats
    python -m hpcbench.report.benchmark --runs 200 --from outputs/runs/<run>

Without --from it trains one tiny serial run first (32 px, 128 images, 2 epochs: about 15 s on
2 cores). The copies leave out checkpoints, which the report never reads. Prints each repeat's
wall time, the median and the runs per second.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

from hpcbench.environment import cpu_model
from hpcbench.rundir import CHECKPOINTS

TINY_RUN = ["data.image_size=32", "data.limit_train=128", "data.limit_test=64", "data.num_workers=0",
            "train.epochs=2", "batch_size=per_device_32"]


def train_tiny_run(target: Path) -> Path:
    env = {**os.environ, "HPCBENCH_OUTPUT_DIR": str(target.parent / "outputs")}
    subprocess.run([sys.executable, "-m", "hpcbench.train", *TINY_RUN, f"hydra.run.dir={target}"], check=True,
                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return target


def copy_runs(source: Path, folder: Path, count: int) -> None:
    for index in range(count):
        shutil.copytree(source, folder / f"run{index:05d}", ignore=shutil.ignore_patterns(CHECKPOINTS))


def time_report(runs: Path, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hpcbench.report.cli", str(runs), "--out", str(out)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hpcbench.report.benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--from", dest="source", type=Path, default=None, help="a run directory to copy")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hpcbench-report-bench-") as scratch:
        scratch_dir = Path(scratch)
        source = args.source or train_tiny_run(scratch_dir / "source")
        copy_runs(source, scratch_dir / "runs", args.runs)
        times = [time_report(scratch_dir / "runs", scratch_dir / f"report{i}") for i in range(args.repeats)]
    median = statistics.median(times)
    print(f"hpcbench-report on {args.runs} run directories, {cpu_model()} ({os.cpu_count()} cores)")
    print(f"wall time per repeat: {', '.join(f'{t:.2f} s' for t in times)}")
    print(f"median {median:.2f} s ({args.runs / median:.0f} runs/s)")


if __name__ == "__main__":
    main()
