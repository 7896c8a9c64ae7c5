"""Optimizers and the learning-rate schedule: StepLR semantics and the large-batch scaling rules."""
from __future__ import annotations

import pytest
import torch
from helpers import TINY, compose_run, read_metrics

from hpcbench.errors import ConfigError
from hpcbench.training.optim import LearningRateSchedule, build_optimizer, lr_scale
from hpcbench.training.trainer import fit


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


@pytest.mark.parametrize(("overrides", "kind", "expected"), [
    ([], torch.optim.Adam, {"lr": 1e-4, "weight_decay": 0}),
    (["train.optimizer=adamw"], torch.optim.AdamW, {"weight_decay": 0.01}),  # torch's own default
    (["train.optimizer=adamw", "train.weight_decay=0.05"], torch.optim.AdamW, {"weight_decay": 0.05}),
    (["train.optimizer=sgd", "train.lr=0.1", "train.weight_decay=1e-4"], torch.optim.SGD,
     {"lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4}),
    (["train.optimizer=sgd", "train.momentum=0.8", "train.nesterov=true"], torch.optim.SGD,
     {"momentum": 0.8, "nesterov": True}),
])
def test_the_configured_optimizer_is_the_one_that_trains(overrides, kind, expected):
    optimizer = build_optimizer([torch.zeros(2, requires_grad=True)], compose_run(overrides).train)
    assert type(optimizer) is kind
    assert {key: optimizer.param_groups[0][key] for key in expected} == expected


def test_an_unknown_optimizer_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="train.optimizer='lamb' is not one of adam, adamw, sgd"):
        compose_run(["train.optimizer=lamb"])


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_every_optimizer_follows_the_schedule_and_resumes_exactly(tmp_path, optimizer):
    settings = [*TINY, f"train.optimizer={optimizer}", "train.lr=0.01", "train.lr_step_size=1", "train.lr_gamma=0.5",
                "train.nesterov=true" if optimizer == "sgd" else "train.weight_decay=0.1"]
    fit(compose_run([*settings, "train.epochs=3"]), tmp_path / "straight")
    fit(compose_run([*settings, "train.epochs=2", "train.keep_checkpoints=resumable"]), tmp_path / "resumed")
    summary = fit(compose_run([*settings, "train.epochs=3"]), tmp_path / "resumed")
    assert summary.restarts == 1
    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [m["lr"] for m in straight] == pytest.approx([0.01, 0.005, 0.0025])
    keys = ("train_loss", "train_acc", "test_loss", "test_acc")
    assert [[m[k] for k in keys] for m in resumed] == [[m[k] for k in keys] for m in straight]
