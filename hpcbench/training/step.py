"""One training step and the numeric options around it: precision (autocast, GradScaler for
fp16), channels_last memory format and torch.compile. Shared by the trainer and the benchmark.

`auto` picks, per device, the fastest setting that leaves the model's results within noise:
bf16 autocast where the hardware computes bf16 natively (GPUs of compute capability 8.0 and newer;
CPUs with AVX512_BF16 or AMX), fp16 + GradScaler on older GPUs, fp32 otherwise; channels_last on.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from hpcbench.training.timing import StepTimer


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# Tensor cores compute bf16 from Ampere (8.0) on. torch.cuda.is_bf16_supported() is also true on a
# V100 (7.0), where bf16 is emulated without tensor cores: slow, where fp16 + GradScaler is fast.
NATIVE_BF16_CAPABILITY = (8, 0)


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.get_device_capability(device) >= NATIVE_BF16_CAPABILITY else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


@dataclass(frozen=True)
class StepOptions:
    precision: str  # fp32 | bf16 | fp16 (resolved, never auto)
    channels_last: bool
    compile: bool

    @classmethod
    def resolve(cls, precision: str, channels_last: Optional[bool], compile_model: bool,
                device: torch.device) -> "StepOptions":
        return cls(resolve_precision(precision, device), True if channels_last is None else channels_last,
                   compile_model)

    @property
    def amp_dtype(self) -> Optional[torch.dtype]:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def autocast(self, device: torch.device):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=self.amp_dtype)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def prepare_input(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images


FP32 = StepOptions("fp32", channels_last=False, compile=False)


class TrainStep:
    """forward (under autocast) -> loss -> backward (scaled for fp16) -> optimizer step; the
    timer marks the end of the backward pass (timing.py)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, options: StepOptions,
                 device: torch.device, timer: Optional[StepTimer] = None):
        self.model, self.optimizer, self.options, self.device = model, optimizer, options, device
        self.timer = timer or StepTimer(device, enabled=False)
        self.criterion = nn.CrossEntropyLoss()
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler(device.type) if options.precision == "fp16" else None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.options.prepare_input(images)
        self.optimizer.zero_grad(set_to_none=True)
        with self.options.autocast(self.device):
            logits = self.model(images)
            loss = self.criterion(logits, labels)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.timer.backward_done()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.timer.backward_done()
            self.optimizer.step()
        return loss.detach().float(), logits.detach()
