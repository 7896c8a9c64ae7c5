"""Which pipeline feeds a run when `data.pipeline=auto`: decided once, the same on every rank, and
kept when the run resumes.

Each rank judges what fits where it runs: `tensor` when the images are of one size, a rank's
decoded copy fits in half its device's memory and what a node's ranks build at once (three copies
each) fits in half of what the job may use of the node's memory (`job_memory.py`: RAM, the cgroup's
limit, Slurm's --mem); for a shard set then `compressed` when the node's ranks' JPEG bytes fit in
that half, else `stream`; for an image folder `pil`. `data.memory_budget_mb` replaces both halves.
The judgement is per device and per node, so 1 and 8 ranks per node get the same pipeline.

Ranks on different kinds of node may judge differently, and pipelines differ in their steps per
epoch (tensor pads a rank's share, stream drops the remainder): DDP would hang. So every rank's
judgement is gathered and all take the one that needs the least memory. The pipeline that fed a
run is recorded in its checkpoints; a resumed run (a requeue onto another kind of node, say) uses
it again instead of judging anew, or stops in one line if it cannot hold it there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional

import torch

from hpcbench.config import RunConfig
from hpcbench.data.job_memory import MemoryLimit, job_memory, readable
from hpcbench.data.shard_reader import ShardSource
from hpcbench.data.sources import ImageSource, balanced_first_n
from hpcbench.errors import ConfigError

RESIDENT_SHARE = 0.5  # the most of a device's memory (and of the job's host memory) auto lets the data take
# While a rank builds its copy on a first run it holds the decoded images about three times in host
# memory at once (the decoded arrays, their stack, its NCHW copy and serialised cache in turn).
HOST_COPIES_WHILE_BUILDING = 3
# The pipelines from the most host or device memory needed to the least: ranks that judge
# differently all take the last of their choices in this order (stream and pil never compete:
# one reads shard sets, the other image folders).
BY_MEMORY = ("tensor", "compressed", "stream", "pil")

Gather = Callable[[object], List[object]]  # every rank's value, in rank order


@dataclass(frozen=True)
class Budget:
    device_bytes: float  # data one device may hold
    host_bytes: float  # data a node's ranks may hold in host memory together
    why: str


def memory_budget(run: RunConfig, device: torch.device, job: Optional[MemoryLimit] = None) -> Budget:
    job = job or job_memory()
    if run.data.memory_budget_mb is not None:
        budget = run.data.memory_budget_mb * 2**20
        return Budget(budget, budget, f"data.memory_budget_mb={run.data.memory_budget_mb:g}; the job may use "
                                      f"{job.describe()}")
    host = RESIDENT_SHARE * job.bytes
    if device.type == "cuda":
        device_bytes = RESIDENT_SHARE * torch.cuda.get_device_properties(device).total_memory  # total: every rank agrees
        return Budget(device_bytes, host, f"half of the GPU's memory and half of {job.describe()}")
    return Budget(host, host, f"half of {job.describe()}")


def ranks_per_node(run: RunConfig) -> int:
    return run.mode.ranks // run.mode.nodes


def resident_fits(run: RunConfig, train: ImageSource, test: ImageSource, device: torch.device,
                  budget: Budget) -> tuple[bool, str]:
    """Whether every rank can hold both splits as uint8 (sized by the first image) on its device,
    and the node's memory can hold what its ranks build at once. A GPU holds its own rank's copy;
    CPU ranks share the node's memory, so their copies add up."""
    count = len(balanced_first_n(train.labels, run.data.limit_train)) + len(balanced_first_n(test.labels,
                                                                                            run.data.limit_test))
    copy = count * train.decode([0]).nbytes
    ranks = ranks_per_node(run)
    on_device = copy * (1 if device.type == "cuda" else ranks)
    building = copy * ranks * HOST_COPIES_WHILE_BUILDING
    why = (f"{readable(on_device)} of decoded images per {device.type} device, {readable(budget.device_bytes)}"
           f" allowed; {readable(building)} of host memory while {ranks} rank(s) build them, "
           f"{readable(budget.host_bytes)} allowed")
    return on_device <= budget.device_bytes and building <= budget.host_bytes, why


def compressed_fits(run: RunConfig, train: ShardSource, test: ShardSource, budget: Budget) -> tuple[bool, str]:
    """Whether the JPEG bytes of the images the run uses (all of train, a rank's range of test),
    once per rank of a node, fit the node's budget."""
    # A shard set holds its images in the order data.limit_* takes them: the first N are the used ones.
    ranks = ranks_per_node(run)
    train_bytes = int(train.index.length[:run.data.limit_train].sum())
    test_bytes = int(test.index.length[:run.data.limit_test].sum()) / run.mode.ranks
    used = (train_bytes + test_bytes) * ranks
    why = f"{readable(used)} of JPEG bytes for {ranks} rank(s) of a node, {readable(budget.host_bytes)} allowed"
    return used <= budget.host_bytes, why


@dataclass(frozen=True)
class Judgement:
    kind: str
    why: str


def judge(run: RunConfig, train: ImageSource, test: ImageSource, device: torch.device) -> Judgement:
    """What auto resolves to on this rank alone (see the module's docstring), and why."""
    budget = memory_budget(run, device)
    shards = isinstance(train, ShardSource) and isinstance(test, ShardSource)
    if shards and train.shards.image_size is None:
        fits, why = False, "the images are not all of one size"
    else:
        fits, why = resident_fits(run, train, test, device, budget)
    if fits:
        return Judgement("tensor", f"{why}; budget: {budget.why}")
    if shards:
        compressed, compressed_why = compressed_fits(run, train, test, budget)
        kind = "compressed" if compressed else "stream"
        return Judgement(kind, f"not tensor: {why}; {compressed_why}; budget: {budget.why}")
    return Judgement("pil", f"the images do not fit on the device ({why}; budget: {budget.why}); a shard set "
                            f"streams them faster (hpcbench-data pack, data=shards)")


def fits_again(kind: str, run: RunConfig, train: ImageSource, test: ImageSource, device: torch.device) -> Judgement:
    """Whether this rank can hold the pipeline a resumed run began with: '' as `why` when it can."""
    budget = memory_budget(run, device)
    if kind == "tensor":
        fits, why = resident_fits(run, train, test, device, budget)
    elif kind == "compressed" and isinstance(train, ShardSource) and isinstance(test, ShardSource):
        fits, why = compressed_fits(run, train, test, budget)
    else:
        fits, why = True, ""
    return Judgement(kind, "" if fits else f"{why}; budget: {budget.why}")


@dataclass(frozen=True)
class Decision:
    kind: str
    note: str  # how auto decided, for train.log ("" when the pipeline was named)


def decide_pipeline(run: RunConfig, train: ImageSource, test: ImageSource, device: torch.device,
                    gather: Optional[Gather] = None, recorded: Optional[str] = None) -> Decision:
    """The pipeline every rank uses: the one asked for, the one a resumed run began with (`recorded`),
    or auto's choice agreed over the ranks (`gather`: None for a single process)."""
    requested = run.data.pipeline
    everyone: Gather = gather or (lambda value: [value])
    if recorded and requested == "auto":  # another explicit choice is refused before (continuation.py)
        verdicts = everyone(fits_again(recorded, run, train, test, device))
        refused = [(rank, v) for rank, v in enumerate(verdicts) if v.why]
        if refused:
            rank, verdict = refused[0]
            raise ConfigError(
                f"cannot resume with the {recorded} pipeline this run began with: it does not fit rank {rank}'s "
                f"memory budget here ({verdict.why}); resume on nodes like the first, or allow it with "
                f"data.memory_budget_mb=N (MiB)")
        return Decision(recorded, f"data.pipeline=auto: {recorded}, the pipeline this run began with (kept on resume)")
    if requested != "auto":
        return Decision(requested, "")
    judgements: List[Judgement] = everyone(judge(run, train, test, device))  # type: ignore[assignment]
    agreed = max(judgements, key=lambda j: BY_MEMORY.index(j.kind))
    if len({j.kind for j in judgements}) == 1:
        return Decision(agreed.kind, f"data.pipeline=auto: {agreed.kind} ({judgements[0].why})")
    first = {j.kind: rank for rank, j in reversed(list(enumerate(judgements)))}  # each kind's first rank
    each = "; ".join(f"rank {rank} and {sum(j.kind == kind for j in judgements) - 1} more: {kind} "
                     f"({judgements[rank].why})" for kind, rank in sorted(first.items(), key=lambda item: item[1]))
    return Decision(agreed.kind, f"data.pipeline=auto: {agreed.kind} for every rank, the choice of the rank with "
                                 f"the least memory, so that all run the same steps ({each})")
