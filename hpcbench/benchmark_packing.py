"""Does packing disturb a run's timing? The same small CPU run, on the Slurm cluster at hand, alone
in its Slurm job and packed side by side with others into one (hydra.launcher.runs_per_allocation,
each slot bound to its own cores): their training throughput from the runs' own metrics, medians
over the epochs after the first, side by side. The two sweeps run one after the other, so that
nothing else shares the nodes' cores; on a cluster whose nodes share hosts (tests/cluster) pick a
slot count the host's cores hold.

    python -m hpcbench.benchmark_packing [--slots 2] [--cpus 1] [--repeats 2] [-- OVERRIDES...]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List

from hpcbench.environment import cpu_model

RUN = ["hardware=ci_cluster", "mode=cpu", "data.image_size=32", "data.limit_train=512", "data.limit_test=64",
       "data.num_workers=0", "train.epochs=4", "batch_size=per_device_32", "train.probe=false"]


def sweep(work: Path, name: str, runs: int, cpus: int, overrides: List[str]) -> List[Path]:
    """Run `runs` alike runs (seeds 0..runs-1) packed `runs` to a Slurm job; their run directories."""
    sweep_dir = work / name
    command = [sys.executable, "-m", "hpcbench.train", "-m", "hydra/launcher=slurm", "hydra.launcher.poll_interval_s=1",
               *RUN, f"mode.cpus_per_rank={cpus}", f"train.seed=range(0,{runs})",
               f"hydra.launcher.runs_per_allocation={runs}", f"hydra.sweep.dir={sweep_dir}", *overrides]
    result = subprocess.run(command, cwd=work, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"the {name} sweep failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    return [sweep_dir / str(n) for n in range(runs)]


def throughputs(run_dirs: List[Path]) -> List[float]:
    """Images per second of every epoch after the first (its warm-up) of every run."""
    return [json.loads(line)["samples_per_s"] for run_dir in run_dirs
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()[1:]]


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hpcbench.benchmark_packing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, default=2, help="runs side by side in the packed Slurm job")
    parser.add_argument("--cpus", type=int, default=1, help="cores of each run")
    parser.add_argument("--repeats", type=int, default=2, help="alone / packed pairs, interleaved")
    parser.add_argument("overrides", nargs="*", help="more hpcbench-train overrides (a hardware profile, say)")
    args = parser.parse_args(argv)
    alone: List[float] = []
    packed: List[float] = []
    bound = []
    with tempfile.TemporaryDirectory(prefix="hpcbench-packing-") as tmp:
        for repeat in range(args.repeats):
            alone += throughputs(sweep(Path(tmp), f"alone{repeat}", 1, args.cpus, args.overrides))
            run_dirs = sweep(Path(tmp), f"packed{repeat}", args.slots, args.cpus, args.overrides)
            packed += throughputs(run_dirs)
            bound += [json.loads((d / "env.json").read_text())["packed"]["cores"] for d in run_dirs]
    print(f"CPU: {cpu_model()}; {args.slots} run(s) of {args.cpus} core(s) packed into one Slurm job, "
          f"cores they were bound to: {bound}")
    print(f"{'':<28}{'images/s (median)':>18}{'epochs':>8}")
    print(f"{'alone in its Slurm job':<28}{statistics.median(alone):>18.1f}{len(alone):>8}")
    print(f"{'packed, side by side':<28}{statistics.median(packed):>18.1f}{len(packed):>8}")
    print(f"packed / alone: {statistics.median(packed) / statistics.median(alone):.3f}")


if __name__ == "__main__":
    main()
