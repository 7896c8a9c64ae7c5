"""The learning-rate schedule: StepLR semantics and the large-batch scaling rules."""
from __future__ import annotations

import pytest
import torch
from conftest import compose_run

from hpcbench.schedule import LearningRateSchedule, lr_scale


def test_without_scaling_it_is_torch_steplr():
    schedule = LearningRateSchedule.for_run(compose_run([]), steps_per_epoch=5)
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-4)
    reference = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.1)
    for epoch in range(1, 26):
        assert schedule.at(epoch) == pytest.approx(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()


def test_scaling_rules():
    assert lr_scale("none", 256, 64) == 1.0
    assert lr_scale("linear", 256, 64) == 4.0
    assert lr_scale("sqrt", 256, 64) == 2.0


def test_linear_rule_with_warmup_ramps_per_step_to_the_scaled_rate():
    run = compose_run(["mode=ddp", "mode.ranks=4", "batch_size=per_device_64", "train.lr_scaling=linear",
                       "train.warmup_epochs=2"])
    schedule = LearningRateSchedule.for_run(run, steps_per_epoch=10)
    assert schedule.peak_lr == pytest.approx(4e-4)  # global batch 256 = 4 x the tuned batch of 64
    assert schedule.at(1, 0) == pytest.approx(1e-4)
    assert schedule.at(1, 5) == pytest.approx(1e-4 + 3e-4 * 0.25)
    assert schedule.at(2, 0) == pytest.approx(2.5e-4)
    assert schedule.at(3, 0) == pytest.approx(4e-4)
    assert schedule.at(11, 0) == pytest.approx(4e-5)


def test_strong_scaling_keeps_the_global_batch_so_the_rate():
    run = compose_run(["mode=ddp", "mode.ranks=4", "batch_size=global_256", "train.lr_scaling=linear"])
    assert LearningRateSchedule.for_run(run, 10).peak_lr == pytest.approx(1e-4)
