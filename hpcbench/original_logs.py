"""hpcbench-import: training logs of the original study's scripts -> run directories the report
reads like any other, so old runs stand beside new ones.

    hpcbench-import serial.log --mode cpu --hardware param_utkarsh --batch 64 --out outputs/imported
    hpcbench-import gpu.log --mode gpu --batch 64 --gpu-name "Tesla V100-SXM2-16GB" --out outputs/imported
    hpcbench-import ddp.log --mode ddp --ranks 2 --batch 128 --out outputs/imported

The logs say, per epoch, `Epoch 1/20 Time: 1551.65s Train Loss: 0.5516 Train Acc: 0.8131 Test Loss:
0.2555 Test Acc: 0.9136`, then `Best test accuracy: 0.9617` and `Total training time: 30955.22s
(515.92 min)`; the MPI script logs `Test Acc(local): ...` without a train accuracy and `Best
local test accuracy: ...`: rank 0's shard of the test set, imported as such (`accuracy_scope:
rank 0 shard`), and the report says it is not a global accuracy. What a log does not say (images
per second, test-set size, hardware, software) stays unknown (null), unless given as an option
here; nothing is derived or invented. Each log becomes OUT/<log name>/.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from hpcbench.cli import fail
from hpcbench.config import DEVICES, MODES, SCALINGS
from hpcbench.errors import HpcbenchError
from hpcbench.files import atomic_write_json, atomic_write_text
from hpcbench.rundir import ENV, METRICS, RESOLVED_CONFIG, SUMMARY

EPOCH = re.compile(r"^Epoch\s+(\d+)\s*/\s*(\d+)\b(.*)$")
FIELD = re.compile(r"(Time|Train Loss|Train Acc|Test Loss|Test Acc(?:\(local\))?)\s*:\s*([-+0-9.eE]+)s?")
BEST = re.compile(r"^Best (local )?test accuracy\s*:\s*([0-9.]+)", re.IGNORECASE)
TOTAL = re.compile(r"^Total training time\s*:\s*([0-9.]+)\s*s", re.IGNORECASE)
NAMES = {"Time": "epoch_time_s", "Train Loss": "train_loss", "Train Acc": "train_acc", "Test Loss": "test_loss",
         "Test Acc": "test_acc", "Test Acc(local)": "test_acc"}
LOCAL = "rank 0 shard"


class LogFormatError(HpcbenchError):
    """The log is not in the original study's format."""


def parse_log(path: Path) -> Dict:
    """{epochs: [...], planned, best, best_is_local, total_s} from one log."""
    epochs: List[Dict] = []
    planned, best, local, total = None, None, False, None
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        raise LogFormatError(f"cannot read {path}: {error.strerror or error}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if match := EPOCH.match(line):
            fields = {NAMES[key]: float(value) for key, value in FIELD.findall(match.group(3))}
            if "test_acc" not in fields:
                raise LogFormatError(f"{path} line {number}: an epoch line without a test accuracy: {line[:80]!r}")
            local = local or "(local)" in match.group(3)
            epochs.append({"epoch": int(match.group(1)), **fields})
            planned = int(match.group(2))
        elif match := BEST.match(line):
            best, local = float(match.group(2)), local or bool(match.group(1))
        elif match := TOTAL.match(line):
            total = float(match.group(1))
    if not epochs:
        raise LogFormatError(f"{path} holds no line like 'Epoch 1/20 Time: ...s ... Test Acc: ...': "
                             f"not a log of the original study's scripts")
    if [e["epoch"] for e in epochs] != list(range(1, len(epochs) + 1)):
        raise LogFormatError(f"{path}: its epochs are not 1, 2, 3, ... in order")
    return {"epochs": epochs, "planned": planned, "best": best, "local": local, "total_s": total}


def run_files(log: Dict, source: Path, args: argparse.Namespace) -> Dict[str, object]:
    """The run directory's files: only what the log and the options say."""
    epochs = log["epochs"]
    ranks = args.ranks if args.mode == "ddp" else 1
    device = args.device or ("cpu" if args.mode == "cpu" else "cuda")
    best = max(epochs, key=lambda e: (e["test_acc"], -e["epoch"]))
    per_device = args.batch if args.scaling == "weak" else args.batch // ranks
    config = {"experiment_name": f"imported_{source.stem}",
              "mode": {"name": args.mode, "device": device, "ranks": ranks, "nodes": args.nodes},
              "hardware": {"name": args.hardware}, "batch_size": {"scaling": args.scaling, "size": args.batch},
              "model": {"name": args.model}, "data": {"name": args.dataset, "image_size": args.image_size},
              "train": {"epochs": log["planned"]}}
    summary = {
        "status": "completed", "mode": args.mode, "device": device, "world_size": ranks, "nodes": args.nodes,
        "ranks_per_node": ranks // args.nodes, "model": args.model, "dataset": args.dataset,
        "image_size": args.image_size, "scaling": args.scaling, "batch_per_device": per_device,
        "global_batch": per_device * ranks, "epochs_planned": log["planned"], "epochs": len(epochs),
        "total_time_s": log["total_s"] if log["total_s"] is not None else sum(e.get("epoch_time_s", 0) for e in epochs),
        "samples_per_s": None, "train_images": None, "test_images": args.test_images,
        "best_test_acc": log["best"] if log["best"] is not None else best["test_acc"], "best_epoch": best["epoch"],
        "final_test_acc": epochs[-1]["test_acc"], "final_test_loss": epochs[-1].get("test_loss"),
        "accuracy_scope": LOCAL if log["local"] else "global", "imported_from": str(source.resolve()),
        "started_at": "", "finished_at": None,
    }
    metrics = "".join(json.dumps({"epoch": e["epoch"], "train_loss": e.get("train_loss"), "train_acc": e.get("train_acc"),
                                  "test_loss": e.get("test_loss"), "test_acc": e["test_acc"],
                                  "epoch_time_s": e.get("epoch_time_s")}, sort_keys=True) + "\n" for e in epochs)
    env = {"imported_from": str(source.resolve()), "cpu_model": args.cpu_model or "",
           "gpus": [args.gpu_name] * ranks if args.gpu_name else [], "hostname": ""}
    return {RESOLVED_CONFIG: yaml.safe_dump(config, sort_keys=True), SUMMARY: summary, METRICS: metrics, ENV: env}


def write_run(run_dir: Path, files: Dict[str, object]) -> None:
    for name, content in files.items():
        if isinstance(content, str):
            atomic_write_text(run_dir / name, content)
        else:
            atomic_write_json(run_dir / name, content)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpcbench-import", description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="folder to write one run directory per log into")
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--batch", type=int, required=True, help="the batch size the run used (per device for weak)")
    parser.add_argument("--scaling", choices=SCALINGS, default="weak")
    parser.add_argument("--ranks", type=int, default=2, help="MPI processes of a ddp run")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--device", choices=DEVICES, default=None, help="default: cpu for --mode cpu, else cuda")
    parser.add_argument("--hardware", default="param_utkarsh", help="the cluster profile's name")
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--test-images", type=int, default=None, help="test-set size, if known (enables parity tests)")
    parser.add_argument("--gpu-name", default=None)
    parser.add_argument("--cpu-model", default=None)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    args = _parser().parse_args(argv)
    try:
        if args.batch <= 0 or args.ranks <= 0 or args.nodes <= 0 or args.ranks % args.nodes:
            raise HpcbenchError("--batch, --ranks and --nodes must be positive, --ranks divisible by --nodes")
        targets = [(log, args.out / log.stem) for log in args.logs]
        for _, run_dir in targets:
            if run_dir.exists():
                raise HpcbenchError(f"{run_dir} exists already; import into another --out or move it away")
        runs = [(run_dir, run_files(parse_log(log), log, args)) for log, run_dir in targets]  # every log parses first
        for run_dir, files in runs:
            write_run(run_dir, files)
            print(run_dir)
    except HpcbenchError as error:
        fail("hpcbench-import", str(error), 2)


if __name__ == "__main__":
    main()
