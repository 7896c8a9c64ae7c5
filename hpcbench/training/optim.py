"""The optimizer and the learning-rate schedule.

Optimizers (`train.optimizer`): Adam (the original study's), AdamW (decoupled weight decay) and
SGD with momentum (optionally Nesterov), the optimizer of Goyal et al. 2017's large-batch rules.
`train.weight_decay` left unset keeps torch's default for the optimizer.

The schedule is the original study's StepLR, plus the large-batch rules for data-parallel runs,
applied whatever the optimizer:

    lr(epoch, step) = peak * gamma ** ((epoch - 1) // step_size)         after the warm-up
    peak            = train.lr * k       linear rule   (k = global batch / train.base_batch)
                    = train.lr * sqrt(k) sqrt rule;   train.lr with rule none
During the first `warmup_epochs` the rate ramps linearly, step by step, from train.lr to peak.
With rule none and no warm-up this is exactly torch's StepLR(step_size, gamma) stepped per epoch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch

from hpcbench.config import RunConfig, TrainConfig, global_batch


def build_optimizer(parameters: Iterable[torch.nn.Parameter], train: TrainConfig) -> torch.optim.Optimizer:
    decay = {} if train.weight_decay is None else {"weight_decay": train.weight_decay}
    if train.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=train.lr, momentum=train.momentum, nesterov=train.nesterov, **decay)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=train.lr, **decay)
    return torch.optim.Adam(parameters, lr=train.lr, **decay)


def lr_scale(rule: str, batch: int, base_batch: int) -> float:
    k = batch / base_batch
    return {"none": 1.0, "linear": k, "sqrt": math.sqrt(k)}[rule]


@dataclass(frozen=True)
class LearningRateSchedule:
    base_lr: float
    peak_lr: float
    warmup_epochs: int
    step_size: int
    gamma: float
    steps_per_epoch: int

    @classmethod
    def for_run(cls, run: RunConfig, steps_per_epoch: int) -> "LearningRateSchedule":
        base_batch = run.train.base_batch or run.batch_size.size
        peak = run.train.lr * lr_scale(run.train.lr_scaling, global_batch(run), base_batch)
        return cls(run.train.lr, peak, run.train.warmup_epochs, run.train.lr_step_size, run.train.lr_gamma,
                   max(1, steps_per_epoch))

    def at(self, epoch: int, step: int = 0) -> float:
        """The rate for `step` (0-based) of `epoch` (1-based)."""
        decay = self.gamma ** ((epoch - 1) // self.step_size)
        progress = (epoch - 1) + step / self.steps_per_epoch
        if progress < self.warmup_epochs:
            return (self.base_lr + (self.peak_lr - self.base_lr) * progress / self.warmup_epochs) * decay
        return self.peak_lr * decay

    def apply(self, optimizer: torch.optim.Optimizer, epoch: int, step: int) -> None:
        for group in optimizer.param_groups:
            group["lr"] = self.at(epoch, step)
