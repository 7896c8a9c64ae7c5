"""What MLflow tracking costs a training step: the same run with tracking=none and tracking=mlflow,
interleaved (none, mlflow, mlflow, none, ...) so that drift hits both alike; prints every run's mean
step time over its steady epochs, the medians and their ratio.

    python tools/tracking_overhead.py --pairs 5                       # the embedded sqlite store
    python tools/tracking_overhead.py --pairs 5 --uri http://host:5000  # a server
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from hpcbench.environment import cpu_model
from hpcbench.report.row import pooled_step_moments

RUN = ["model=resnet18", "data.image_size=64", "data.limit_train=1024", "data.limit_test=256", "train.epochs=4",
       "batch_size=per_device_32", "train.probe=false", "train.save_checkpoints=true"]


def step_time(root: Path, name: str, tracking: list[str]) -> float:
    run_dir = root / name
    subprocess.run([sys.executable, "-m", "hpcbench.train", *RUN, *tracking, f"hydra.run.dir={run_dir}"], check=True,
                   cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return pooled_step_moments(metrics)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--uri", default=None, help="a tracking server (default: sqlite:///<tmp>/mlflow.db)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        uri = args.uri or f"sqlite:///{root / 'mlflow.db'}"
        times: dict[str, list[float]] = {"none": [], "mlflow": []}
        for pair in range(args.pairs):
            order = ("none", "mlflow") if pair % 2 == 0 else ("mlflow", "none")
            for kind in order:
                tracking = ["tracking=mlflow", f"tracking.uri={uri}"] if kind == "mlflow" else []
                times[kind].append(step_time(root, f"{kind}{pair}", tracking))
                print(f"pair {pair + 1} {kind:6s} mean step {times[kind][-1] * 1e3:7.2f} ms", flush=True)
    none, tracked = statistics.median(times["none"]), statistics.median(times["mlflow"])
    print(f"\n{cpu_model()}: {' '.join(RUN)}; tracking to {args.uri or 'an embedded sqlite store'}")
    print(f"median step: none {none * 1e3:.2f} ms, mlflow {tracked * 1e3:.2f} ms, overhead {(tracked / none - 1) * 100:+.2f}%")


if __name__ == "__main__":
    main()
