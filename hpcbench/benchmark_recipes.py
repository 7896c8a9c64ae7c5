"""The recipes `python -m hpcbench.benchmark` compares and how one is measured: each built once
(model, optimizer, pipeline), then timed by the real training loop (trainer.train_one_epoch), the
recipes in turn (A B, B A, ...) so that drift and order hit all alike."""
from __future__ import annotations

import argparse
import itertools
import math
import statistics
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Tuple

import torch

from hpcbench.config import BatchSizeConfig, DataConfig, ModeConfig, ModelConfig, RunConfig, TrainConfig
from hpcbench.data.pipeline import build_pipeline
from hpcbench.environment import cpu_model
from hpcbench.models import build_model
from hpcbench.mpi.topology import SERIAL, Topology, init_mpi, launched_by_mpi, mpi_topology
from hpcbench.training.ddp import wrap_for_ddp
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


def benchmark_topology() -> Topology:
    """Under mpiexec, the ranks of a DDP benchmark (gloo on CPUs, NCCL on GPUs); else serial."""
    if not launched_by_mpi():
        return SERIAL
    return mpi_topology(init_mpi().COMM_WORLD.Get_size())


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.get_num_threads()} threads per rank)"


def paired_ratio(a: List[float], b: List[float]) -> float:
    """a / b from each repeat's pair: the geometric mean of the repeats' ratios, the centre of
    paired_ratio_interval (a ratio of medians mixes repeats the machine ran at other speeds)."""
    return math.exp(statistics.mean(math.log(x / y) for x, y in zip(a, b, strict=True)))


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
