"""Steady-state training throughput: the original study's recipe against hpcbench's defaults,
same device, model, image size and batch, interleaved (A B A B ...) so drift hits both alike.

    python -m hpcbench.benchmark                        # 224 px, batch 32, this machine's device
    python -m hpcbench.benchmark --device cuda --batch 256 --steps 50 --repeats 5
    python -m hpcbench.benchmark --data-root data/cifar10   # real CIFAR-10 JPEGs instead of synthetic

Recipes:
  original   PIL transforms in 2 DataLoader workers, fp32, NCHW (the study's setting)
  hpcbench   device-resident uint8 data with batched augmentation, auto precision, channels_last
  resident   (GPU) hpcbench's training step on batches already augmented on the device: the
             ceiling the data pipeline is measured against (pipeline overhead = 1 - hpcbench/resident)
Prints medians and ratios; nothing here needs Hydra, so it runs wherever torch and torchvision do.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import date
from typing import Dict, List, Optional

import torch
import torchvision

from hpcbench.config import BatchSizeConfig, DataConfig, ModeConfig, ModelConfig, RunConfig, TrainConfig
from hpcbench.data.pipeline import build_pipeline
from hpcbench.environment import cpu_model
from hpcbench.models import build_model
from hpcbench.training.device import synchronize
from hpcbench.training.step import StepOptions, TrainStep

WARMUP_STEPS = 3


@dataclass(frozen=True)
class Recipe:
    name: str
    pipeline: str
    precision: str
    channels_last: bool
    workers: int
    resident: bool = False  # pre-augmented device batches: no pipeline in the loop


def recipes(device: torch.device) -> List[Recipe]:
    chosen = [Recipe("original", "pil", "fp32", False, 2), Recipe("hpcbench", "tensor", "auto", True, 0)]
    if device.type == "cuda":
        chosen.append(Recipe("resident", "tensor", "auto", True, 0, resident=True))
    return chosen


def run_config(recipe: Recipe, args: argparse.Namespace, images: int) -> RunConfig:
    data = DataConfig(name="image_folder" if args.data_root else "synthetic", root=args.data_root,
                      image_size=args.image_size, limit_train=images, limit_test=args.batch, num_workers=recipe.workers,
                      pipeline=recipe.pipeline)
    return RunConfig(mode=ModeConfig(name="gpu" if args.device == "cuda" else "cpu", device=args.device),
                     batch_size=BatchSizeConfig("weak", args.batch), model=ModelConfig(args.model), data=data,
                     train=TrainConfig(precision=recipe.precision, channels_last=recipe.channels_last))


def measure(recipe: Recipe, args: argparse.Namespace, device: torch.device) -> float:
    """Training images per second over `args.steps` steps after the warm-up steps."""
    steps = WARMUP_STEPS + args.steps
    cfg = run_config(recipe, args, steps * args.batch)
    pipeline = build_pipeline(cfg, rank=0, world_size=1, device=device)
    pipeline.set_epoch(1, seed=0)
    options = StepOptions.resolve(recipe.precision, recipe.channels_last, args.compile, device)
    model = options.prepare_model(build_model(args.model, len(pipeline.classes), image_size=args.image_size).to(device))
    step = TrainStep(torch.compile(model) if options.compile else model,
                     torch.optim.Adam(model.parameters(), lr=1e-4), options, device)
    model.train()
    batches = iter(pipeline.train_loader)
    if recipe.resident:
        fixed = [next(batches) for _ in range(4)]
        batches = (fixed[i % 4] for i in range(steps))
    start = None
    for index in range(steps):
        if index == WARMUP_STEPS:
            synchronize(device)
            start = time.perf_counter()
        images, labels = next(batches)
        step(images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
    synchronize(device)
    return args.steps * args.batch / (time.perf_counter() - start)


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(prog="python -m hpcbench.benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement (after 3 warm-up steps)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model in the hpcbench recipes")
    parser.add_argument("--data-root", default=None, help="an ImageFolder tree (train/<class>/...) instead of synthetic data")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    chosen = recipes(device)
    rates: Dict[str, List[float]] = {r.name: [] for r in chosen}
    for repeat in range(args.repeats):
        for recipe in chosen:  # interleaved
            rates[recipe.name].append(measure(recipe, args, device))
            print(f"repeat {repeat + 1}/{args.repeats} {recipe.name:9s} {rates[recipe.name][-1]:9.1f} img/s", flush=True)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    result = {
        "date": date.today().isoformat(), "hardware": hardware(device), "device": args.device,
        "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version(),
        "model": args.model, "image_size": args.image_size, "batch": args.batch, "steps": args.steps,
        "repeats": args.repeats, "rates": rates, "medians": medians,
        "speedup_vs_original": medians["hpcbench"] / medians["original"],
        "precision": StepOptions.resolve("auto", None, False, device).precision,
    }
    if "resident" in medians:
        result["pipeline_overhead"] = 1 - medians["hpcbench"] / medians["resident"]
    print(f"\n{args.model} at {args.image_size} px, batch {args.batch}, on {result['hardware']}; torch {torch.__version__}")
    print("| recipe | median img/s | runs |\n|---|---|---|")
    for name, values in rates.items():
        print(f"| {name} | {medians[name]:.1f} | {', '.join(f'{v:.1f}' for v in values)} |")
    print(f"hpcbench / original: {result['speedup_vs_original']:.2f}x (hpcbench precision: {result['precision']})")
    if "pipeline_overhead" in result:
        print(f"data pipeline overhead (1 - hpcbench / resident): {result['pipeline_overhead'] * 100:.1f}%")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    sys.stdout.flush()
    return result


if __name__ == "__main__":
    main()
