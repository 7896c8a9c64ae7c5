"""What MLflow tracking costs a training step: the same run with tracking=none and tracking=mlflow,
interleaved (none, mlflow, mlflow, none, ...) so that drift hits both alike; prints every run's mean
step time over its steady epochs, the medians and their ratio, and, more precisely than step times
on a shared machine can say, the CPU time the tracking thread uses per epoch (its own count, in
train.log) as a share of the epoch's CPU capacity.

    python tools/tracking_overhead.py --pairs 5                       # the embedded sqlite store
    python tools/tracking_overhead.py --pairs 5 --uri http://host:5000  # a server
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from hpcbench.environment import cpu_model
from hpcbench.report.row import pooled_step_moments

RUN = ["model=resnet18", "data.image_size=64", "data.limit_train=1024", "data.limit_test=256", "train.epochs=4",
       "batch_size=per_device_32", "train.probe=false", "train.save_checkpoints=true"]


def measure(root: Path, name: str, tracking: list[str]) -> tuple[float, float]:
    """(mean step time over the steady epochs, the tracking thread's CPU time per epoch after its
    first sync (mlflow's import and connection, once per run) as a share of the CPU capacity an
    epoch has: its wall time x the run's cores)."""
    run_dir = root / name
    subprocess.run([sys.executable, "-m", "hpcbench.train", *RUN, *tracking, f"hydra.run.dir={run_dir}"], check=True,
                   cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cores = json.loads((run_dir / "summary.json").read_text())["cores_per_rank"]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    counted = re.search(r"MLflow tracking: (\d+) sync\(s\), ([0-9.]+) s of CPU in the background \(([0-9.]+) s the first",
                        (run_dir / "train.log").read_text())
    if not counted:
        return pooled_step_moments(metrics)[0], 0.0
    syncs, cpu_s, first_s = int(counted.group(1)), float(counted.group(2)), float(counted.group(3))
    per_sync_s = (cpu_s - first_s) / max(syncs - 1, 1)
    epoch_s = statistics.median(m["epoch_time_s"] for m in metrics)
    return pooled_step_moments(metrics)[0], per_sync_s * syncs / len(metrics) / (epoch_s * cores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--uri", default=None, help="a tracking server (default: sqlite:///<tmp>/mlflow.db)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        uri = args.uri or f"sqlite:///{root / 'mlflow.db'}"
        times: dict[str, list[float]] = {"none": [], "mlflow": []}
        shares: list[float] = []
        for pair in range(args.pairs):
            order = ("none", "mlflow") if pair % 2 == 0 else ("mlflow", "none")
            for kind in order:
                tracking = ["tracking=mlflow", f"tracking.uri={uri}"] if kind == "mlflow" else []
                step, share = measure(root, f"{kind}{pair}", tracking)
                times[kind].append(step)
                if kind == "mlflow":
                    shares.append(share)
                print(f"pair {pair + 1} {kind:6s} mean step {step * 1e3:7.2f} ms"
                      + (f", tracking thread {share * 100:.2f}% of an epoch's CPU" if kind == "mlflow" else ""),
                      flush=True)
    none, tracked = statistics.median(times["none"]), statistics.median(times["mlflow"])
    spread = (max(times["none"]) - min(times["none"])) / none * 100
    print(f"\n{cpu_model()}: {' '.join(RUN)}; tracking to {args.uri or 'an embedded sqlite store'}")
    print(f"median step: none {none * 1e3:.2f} ms, mlflow {tracked * 1e3:.2f} ms, difference {(tracked / none - 1) * 100:+.2f}% "
          f"(run-to-run spread without tracking: {spread:.0f}%)")
    print(f"tracking thread, after its first sync (import, connection: once per run): median "
          f"{statistics.median(shares) * 100:.2f}% of an epoch's CPU capacity (wall time x cores)")


if __name__ == "__main__":
    main()
