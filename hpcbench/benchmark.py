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
data set of --bench-data (benchmark_data.py): pil (2 workers), stream (JPEGs read per batch from
the shards, 1 decode worker), compressed (JPEGs in host memory), decoded (the tensor pipeline:
decoded-resident), step (the model step alone on batches already made); plus the decoder's
per-core rate and the host memory each recipe added.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import statistics
import sys
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torchvision
from tabulate import tabulate

from hpcbench.benchmark_data import decode_rates, prepare
from hpcbench.config import BatchSizeConfig, DataConfig, ModeConfig, ModelConfig, RunConfig, TrainConfig
from hpcbench.data.pipeline import build_pipeline
from hpcbench.environment import cpu_model
from hpcbench.models import build_model
from hpcbench.mpi.topology import SERIAL, Topology, init_mpi, launched_by_mpi, mpi_topology
from hpcbench.training.ddp import wrap_for_ddp
from hpcbench.training.device import select_device
from hpcbench.training.optim import LearningRateSchedule
from hpcbench.training.signals import StopFlag
from hpcbench.training.step import StepOptions, TrainStep
from hpcbench.training.timing import StepTimer
from hpcbench.training.trainer import TIMING_WARMUP_STEPS, train_one_epoch


@dataclass(frozen=True)
class Recipe:
    name: str
    pipeline: str
    precision: str
    channels_last: bool
    workers: int
    resident: bool = False  # pre-augmented device batches: no pipeline in the loop
    shards: str = ""  # --pipelines: the shard set it reads
    timed: bool = True  # the trainer's step timing (marks, timed all-reduce hook)
    compile: bool = False


def recipes(device: torch.device, args: argparse.Namespace) -> List[Recipe]:
    """The recipes to compare (--compile applies to hpcbench's, never to the study's own)."""
    fast = Recipe("hpcbench", "tensor", "auto", True, 0, compile=args.compile)
    if args.pipelines:
        chosen = [replace(fast, name="pil", pipeline="pil", workers=2), replace(fast, name="stream", pipeline="stream",
                  workers=1), replace(fast, name="compressed", pipeline="compressed", workers=1),
                  replace(fast, name="decoded"), replace(fast, name="step", resident=True)]
    elif args.instrumentation:
        chosen = [fast, replace(fast, name="untimed", timed=False)]
    else:
        chosen = [Recipe("original", "pil", "fp32", False, 2), fast]
        if device.type == "cuda":
            chosen.append(replace(fast, name="resident", resident=True))
    return [r for r in chosen if not args.recipes or r.name in args.recipes.split(",")]


class FixedBatches:
    """The same few batches, already on the device and augmented, for a whole epoch."""

    def __init__(self, batches: list, steps: int):
        self.batches, self.steps = batches, steps
        self.batch_size = len(batches[0][1])
        self.generator = torch.Generator()

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return (self.batches[i % len(self.batches)] for i in range(self.steps))


class Bench:
    """One recipe, built once (model, optimizer, pipeline; compiled once with --compile)."""

    def __init__(self, recipe: Recipe, args: argparse.Namespace, device: torch.device, topology: Topology):
        self.recipe, self.device, self.topology = recipe, device, topology
        steps = TIMING_WARMUP_STEPS + args.steps
        cfg = run_config(recipe, args, steps * args.batch * topology.world_size)
        self.pipeline = build_pipeline(cfg, topology.rank, topology.world_size, device)
        if recipe.resident:
            self.pipeline.set_epoch(1, seed=0)
            loader = iter(self.pipeline.train_loader)
            self.pipeline.train_loader = FixedBatches(list(itertools.islice(loader, 4)), steps)
        options = StepOptions.resolve(recipe.precision, recipe.channels_last, recipe.compile, device)
        timer = StepTimer(device, enabled=recipe.timed)
        model = options.prepare_model(build_model(args.model, len(self.pipeline.classes), image_size=args.image_size)
                                      .to(device))
        if topology.distributed:
            model = wrap_for_ddp(model, device, timer, options, args.image_size)
        compiled = torch.compile(model) if options.compile else model
        self.step = TrainStep(compiled, torch.optim.Adam(model.parameters(), lr=1e-4), options, device, timer)
        self.schedule = LearningRateSchedule(1e-4, 1e-4, 0, 10**9, 1.0, steps)
        self.epoch = 0

    def measure(self) -> float:
        """Training images per second of all ranks, the loop's own figure (warm-up steps left out)."""
        self.epoch += 1
        self.pipeline.set_epoch(self.epoch, seed=0)
        result = train_one_epoch(self.step, self.pipeline, self.schedule, self.epoch, self.topology, "", StopFlag())
        return result.samples_per_s


def run_config(recipe: Recipe, args: argparse.Namespace, images: int) -> RunConfig:
    name = "shards" if recipe.shards else "image_folder" if args.data_root else "synthetic"
    data = DataConfig(name=name, root=recipe.shards or args.data_root, image_size=args.image_size, limit_train=images,
                      limit_test=args.batch, num_workers=recipe.workers, pipeline=recipe.pipeline)
    return RunConfig(mode=ModeConfig(name="gpu" if args.device == "cuda" else "cpu", device=args.device),
                     batch_size=BatchSizeConfig("weak", args.batch), model=ModelConfig(args.model), data=data,
                     train=TrainConfig(precision=recipe.precision, channels_last=recipe.channels_last))


def _topology() -> Topology:
    """Under mpiexec, the ranks of a DDP benchmark (gloo on CPUs, NCCL on GPUs); else serial."""
    if not launched_by_mpi():
        return SERIAL
    return mpi_topology(init_mpi().COMM_WORLD.Get_size())


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.get_num_threads()} threads per rank)"


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


def paired_ratio_interval(a: List[float], b: List[float]) -> Tuple[float, float]:
    """95% interval of a / b from each repeat's pair (Student t on the log ratios): a repeat measures
    both back to back, so the machine's drift between repeats cancels out of the ratio."""
    from scipy import stats  # lazily: the GPU check's machine needs it only for this

    logs = [math.log(x / y) for x, y in zip(a, b, strict=True)]
    if len(logs) < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(statistics.mean(logs) - half), math.exp(statistics.mean(logs) + half)


def measure_interleaved(benches: List[Bench], repeats: int, say: Callable) -> Dict[str, List[float]]:
    rates: Dict[str, List[float]] = {bench.recipe.name: [] for bench in benches}
    for repeat in range(repeats):
        # Interleaved, in ABBA order: drift and whichever-runs-first effects hit every recipe alike.
        for bench in benches if repeat % 2 == 0 else benches[::-1]:
            rates[bench.recipe.name].append(bench.measure())
            say(f"repeat {repeat + 1}/{repeats} {bench.recipe.name:10s} {rates[bench.recipe.name][-1]:9.1f} img/s",
                flush=True)
    return rates


def resident_mb() -> float:
    """This process's resident memory now (VmRSS), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def compare_pipelines(args: argparse.Namespace, device: torch.device, topology: Topology, say: Callable) -> Dict:
    """--pipelines: every pipeline feeding the same step, per data set, with the decoder's per-core rate."""
    results: Dict = {"date": date.today().isoformat(), "hardware": hardware(device), "torch": torch.__version__,
                     "model": args.model, "image_size": args.image_size, "batch_per_rank": args.batch,
                     "ranks": topology.world_size, "data": {}}
    for kind in args.bench_data.split(","):
        data = prepare(kind, Path(args.work_dir), args.bench_images, args.image_size,
                       Path(args.data_root) if args.data_root else None)
        benches, added = [], {}
        for recipe in recipes(device, args):
            before = resident_mb()
            shards = data.resident_shards if recipe.pipeline == "tensor" else data.shards
            benches.append(Bench(replace(recipe, shards=str(shards)), args, device, topology))
            added[recipe.name] = resident_mb() - before
        rates = measure_interleaved(benches, args.repeats, say)
        medians = {name: statistics.median(values) for name, values in rates.items()}
        decode = decode_rates(data.shards, args.image_size)
        results["data"][kind] = {"rates": rates, "medians": medians, "host_mb_added": added, **decode}
        say(f"\n{kind}: {args.model} at {args.image_size} px, batch {args.batch} x {topology.world_size} rank(s), "
            f"on {results['hardware']}; torch {torch.__version__}")
        say(tabulate([[name, f"{medians[name]:.1f}", _share(rates, name, "decoded"), _share(rates, name, "step"),
                       f"{added[name]:.0f}", ", ".join(f"{v:.1f}" for v in values)] for name, values in rates.items()],
                     headers=["recipe", "median img/s", "of decoded [95% paired interval]", "of step",
                              "host MiB added", "runs"], tablefmt="github"))
        say(f"decode per core: {decode['stream_decode_per_core']:.0f} img/s (stream: libjpeg-turbo + resize), "
            f"{decode['pil_decode_per_core']:.0f} img/s (PIL decode + Resize)")
    if args.json and topology.is_main:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


def _share(rates: Dict[str, List[float]], name: str, of: str) -> str:
    """The ratio of medians, and the repeats' paired 95% interval of the ratio (the spread between
    repeats on a busy 2-core machine is often wider than the difference between pipelines)."""
    if of not in rates:
        return ""
    share = f"{statistics.median(rates[name]) / statistics.median(rates[of]) * 100:.1f}%"
    if name == of or len(rates[name]) < 2:
        return share
    low, high = paired_ratio_interval(rates[name], rates[of])
    return f"{share} [{low * 100:.0f}-{high * 100:.0f}%]"


def main(argv: Optional[List[str]] = None) -> Dict:
    args = _parser().parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    topology = _topology()
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
