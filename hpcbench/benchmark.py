"""Steady-state training throughput of the real training loop (training/trainer.train_one_epoch),
recipes side by side: each is built once, then measured in turn (A B, B A, A B, ...), so drift
and order hit all alike. Prints medians and ratios; needs only torch and torchvision (no Hydra).

    python -m hpcbench.benchmark                        # 224 px, batch 32, this machine's device
    python -m hpcbench.benchmark --device cuda --batch 256 --steps 50 --repeats 3 [--compile]
    python -m hpcbench.benchmark --instrumentation      # the step timing's own cost
    mpiexec -n 2 python -m hpcbench.benchmark --device cpu --instrumentation   # ... with DDP's comm hook

    python -m hpcbench.benchmark --pipelines            # the data pipelines side by side (below)

Recipes:
  original   PIL transforms in 2 DataLoader workers, fp32, NCHW (the study's setting)
  hpcbench   device-resident uint8 data with batched augmentation, auto precision, channels_last
  resident   (GPU) hpcbench's step on batches already augmented on the device: the ceiling the
             data pipeline is measured against (pipeline overhead = 1 - hpcbench / resident)
  untimed    (--instrumentation) hpcbench without the step timing (no marks, DDP's built-in
             all-reduce instead of the timed hook): instrumentation cost = 1 - hpcbench / untimed
--pipelines: the same training step (auto precision, channels_last) fed by each pipeline, on each
data set of --bench-data (benchmark_pipelines.py): pil (2 workers), stream (JPEGs read per batch from
the shards, 1 decode worker), compressed (JPEGs in host memory), decoded (the tensor pipeline:
decoded-resident), step (the model step alone on batches already made); plus the decoder's
per-core rate and the host memory each recipe added.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from datetime import date
from typing import Dict, List, Optional

import torch
import torchvision

from hpcbench.benchmark_pipelines import compare_pipelines
from hpcbench.benchmark_recipes import (
    Bench,
    benchmark_topology,
    hardware,
    measure_interleaved,
    paired_ratio_interval,
    recipes,
)
from hpcbench.training.device import select_device
from hpcbench.training.step import StepOptions
from hpcbench.training.trainer import TIMING_WARMUP_STEPS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hpcbench.benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32, help="per rank")
    parser.add_argument("--steps", type=int, default=8, help=f"timed steps per measurement (after {TIMING_WARMUP_STEPS})")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model in the hpcbench recipes")
    parser.add_argument("--instrumentation", action="store_true", help="hpcbench with and without the step timing")
    parser.add_argument("--pipelines", action="store_true", help="the data pipelines side by side (see above)")
    parser.add_argument("--bench-data", default="imagenet-like",
                        help="--pipelines: imagenet-like (generated JPEGs) and/or folder (--data-root), comma-separated")
    parser.add_argument("--bench-images", type=int, default=2000, help="imagenet-like: JPEGs to generate")
    parser.add_argument("--work-dir", default="outputs/benchmark-data", help="where --pipelines keeps its shard sets")
    parser.add_argument("--recipes", default="", help="only these, comma-separated (e.g. hpcbench,resident)")
    parser.add_argument("--data-root", default=None, help="an ImageFolder tree (train/<class>/...) instead of synthetic data")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    return parser


def main(argv: Optional[List[str]] = None) -> Dict:
    args = _parser().parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    topology = benchmark_topology()
    device = select_device(args.device, topology)
    if topology.distributed:
        from hpcbench.mpi.process_group import init_process_group, resolve_backend

        torch.set_num_threads(max(1, torch.get_num_threads() // topology.local_size))
        init_process_group(topology, resolve_backend("auto", args.device), 300)
    say = print if topology.is_main else (lambda *a, **k: None)
    if args.pipelines:
        return compare_pipelines(args, device, topology, say)
    chosen = recipes(device, args)
    rates = measure_interleaved([Bench(recipe, args, device, topology) for recipe in chosen], args.repeats, say)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    result = {
        "date": date.today().isoformat(), "hardware": hardware(device), "device": args.device,
        "ranks": topology.world_size, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "python": platform.python_version(), "model": args.model, "image_size": args.image_size,
        "batch_per_rank": args.batch, "steps": args.steps, "repeats": args.repeats, "compile": args.compile,
        "rates": rates, "medians": medians,
        "precision": StepOptions.resolve("auto", None, False, device).precision,
    }
    if "hpcbench" in medians:
        for other, key in (("original", "speedup_vs_original"), ("resident", "pipeline_overhead"),
                           ("untimed", "instrumentation_cost")):
            if other in medians:
                ratio = medians["hpcbench"] / medians[other]
                result[key] = ratio if other == "original" else 1 - ratio
        if "untimed" in rates:
            low, high = paired_ratio_interval(rates["hpcbench"], rates["untimed"])
            result["instrumentation_cost_interval"] = [1 - high, 1 - low]
    say(f"\n{args.model} at {args.image_size} px, batch {args.batch} per rank x {topology.world_size} rank(s), "
        f"on {result['hardware']}; torch {torch.__version__}{', compiled' if args.compile else ''}")
    say("| recipe | median img/s | runs |\n|---|---|---|")
    for name, values in rates.items():
        say(f"| {name} | {medians[name]:.1f} | {', '.join(f'{v:.1f}' for v in values)} |")
    if "speedup_vs_original" in result:
        say(f"hpcbench / original: {result['speedup_vs_original']:.2f}x (hpcbench precision: {result['precision']})")
    if "pipeline_overhead" in result:
        say(f"data pipeline overhead (1 - hpcbench / resident): {result['pipeline_overhead'] * 100:.1f}%")
    if "instrumentation_cost" in result:
        low, high = result["instrumentation_cost_interval"]
        say(f"instrumentation cost (1 - timed / untimed): {result['instrumentation_cost'] * 100:+.1f}% "
            f"(95% interval from the repeats' pairs: {low * 100:+.1f}% to {high * 100:+.1f}%)")
    if args.json and topology.is_main:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    sys.stdout.flush()
    if topology.distributed:
        from hpcbench.mpi.process_group import shutdown

        shutdown()
    return result


if __name__ == "__main__":
    main()
