"""The model as one rank of DDP: wrapped, its all-reduce timed, and its gradient buckets laid out
before the first real step, so that a resumed run sums gradients exactly as an uninterrupted one.

Why the layout matters: DDP reduces the first backward's gradients in one bucket in parameter
order, then rebuilds its buckets once from the order in which gradients became ready. Where a
gradient sits in its bucket decides which rank's chunk of the ring all-reduce it falls in, and so
the order in which the ranks' values are summed: with 3 or more ranks that changes the last bits
of the sum. A run resumed at epoch k built a fresh DDP, so its first step of epoch k used the
first layout where the uninterrupted run used the rebuilt one; everything after drifted in the 7th
digit (seen with 4 fp32 ranks, tests/test_multinode.py's requeue test). One backward of a zero
loss before training makes every real step of every run, fresh or resumed, use the rebuilt layout.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hpcbench.training.step import StepOptions
from hpcbench.training.timing import StepTimer, timed_allreduce_hook

# The smallest batch every layer takes in training mode (BatchNorm needs 2 values per channel).
LAYOUT_BATCH = 2


def wrap_for_ddp(model: nn.Module, device: torch.device, timer: StepTimer, options: StepOptions,
                 image_size: int) -> DistributedDataParallel:
    """`model` (on `device`) as a DDP module whose all-reduce `timer` times per bucket, its
    gradient buckets already in their final layout."""
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if timer.enabled:
        ddp.register_comm_hook(timer, timed_allreduce_hook)  # DDP's all-reduce, timed per bucket
    lay_out_gradient_buckets(ddp, options, device, image_size)
    return ddp


def lay_out_gradient_buckets(ddp: DistributedDataParallel, options: StepOptions, device: torch.device,
                             image_size: int) -> None:
    """One forward and backward through `ddp` exactly as a training step makes them (training
    mode, the step's autocast and memory format), on a batch of zeros with a loss of zero: DDP
    records the order in which gradients become ready and rebuilds its buckets at the next
    forward. Leaves no trace: the all-reduced gradients are zero and dropped, no optimizer step is
    taken, and the BatchNorm statistics and random number generators are as before."""
    module = ddp.module
    buffers = {name: buffer.clone() for name, buffer in module.named_buffers()}
    images = torch.zeros(LAYOUT_BATCH, 3, image_size, image_size, device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        with options.autocast(device):
            loss = ddp(options.prepare_input(images)).float().sum() * 0.0
        loss.backward()
    with torch.no_grad():
        for name, buffer in module.named_buffers():
            buffer.copy_(buffers[name])
    module.zero_grad(set_to_none=True)
