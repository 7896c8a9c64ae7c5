"""DDP's gradient buckets are in their final layout before the first real step (training/ddp.py),
so that a resumed run reduces every step as the uninterrupted run does."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from hpcbench.models import build_model
from hpcbench.training.ddp import wrap_for_ddp
from hpcbench.training.step import FP32, StepOptions, TrainStep
from hpcbench.training.timing import StepTimer

CPU = torch.device("cpu")


@pytest.fixture
def one_rank_world(tmp_path):
    """A real gloo process group of one rank: DDP buckets and rebuilds as with many."""
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _buckets_per_step(model: nn.Module, options: StepOptions, steps: int) -> list[int]:
    timer = StepTimer(CPU)
    ddp = wrap_for_ddp(model, CPU, timer, options, image_size=32)
    step = TrainStep(ddp, torch.optim.Adam(ddp.parameters(), lr=1e-4), options, CPU, timer)
    counts = []
    for _ in range(steps):
        timer.new_epoch()
        timer.start()
        step(torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,)))
        counts.append(len(timer.current.buckets))
    return counts


@pytest.mark.parametrize("options", [FP32, StepOptions("bf16", channels_last=True, compile=False)],
                         ids=["fp32", "bf16-channels-last"])
def test_the_first_real_step_reduces_in_the_layout_of_every_later_step(one_rank_world, options):
    # Without the layout step, DDP's first step reduces the whole model in one bucket and the
    # rebuilt steps in two (the first capped at 1 MB): the layout a resumed run would start with.
    counts = _buckets_per_step(build_model("mobilenet_v2", 10, image_size=32), options, steps=3)
    assert counts[0] == counts[1] == counts[2] and counts[0] > 1, counts


def test_laying_out_the_buckets_leaves_no_trace(one_rank_world):
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", 10, image_size=32)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    rng = torch.get_rng_state()
    ddp = wrap_for_ddp(model, CPU, StepTimer(CPU), FP32, image_size=32)
    after = ddp.module.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # weights, BatchNorm statistics
    assert all(p.grad is None for p in ddp.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
