"""What hpcbench decides for a GPU it cannot see here: the rule, checked with the capability a
GPU would report (real GPUs: tools/gpu_check.sh on the device machine)."""
from __future__ import annotations

import pytest
import torch

from hpcbench.training.step import resolve_precision

CUDA = torch.device("cuda", 0)


@pytest.mark.parametrize(("gpu", "capability", "expected"), [
    ("V100, the original study's", (7, 0), "fp16"),  # torch.cuda.is_bf16_supported() is true there: emulated
    ("T4", (7, 5), "fp16"),
    ("A100", (8, 0), "bf16"),
    ("H100 / H200", (9, 0), "bf16"),
])
def test_auto_precision_on_a_gpu_follows_its_compute_capability(monkeypatch, gpu, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)  # as torch says on a V100
    assert resolve_precision("auto", CUDA) == expected
    assert resolve_precision("fp32", CUDA) == "fp32"  # an explicit choice stands
