"""Config groups compose, and invalid input fails at start with one line naming the key."""
from __future__ import annotations

import pytest
from helpers import compose_config, compose_run, run_cli
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigAttributeError, ValidationError

from hpcbench.config import global_batch, per_device_batch
from hpcbench.errors import ConfigError
from hpcbench.train import CONFIG_DIR

GROUPS = ["mode", "hardware", "batch_size", "model", "data", "paths", "experiment", "original_study", "quickstart"]


def group_options():
    for group in GROUPS:
        for path in sorted((CONFIG_DIR / group).glob("*.yaml")):
            yield group, path.stem


@pytest.mark.parametrize(("group", "option"), list(group_options()))
def test_every_option_of_every_group_composes_and_validates(group, option):
    prefix = "+" if group in ("original_study", "quickstart") else ""
    run = compose_run([f"{prefix}{group}={option}"])
    assert run.batch_size.size > 0


def test_defaults_are_the_original_recipe():
    run = compose_run([])
    assert (run.model.name, run.train.epochs, run.train.lr, run.train.seed) == ("mobilenet_v2", 20, 1e-4, 42)
    assert (run.train.lr_step_size, run.train.lr_gamma, run.data.image_size) == (10, 0.1, 224)
    assert run.data.name == "synthetic"  # offline default


def test_original_study_settings_are_expressible():
    serial = compose_run(["experiment=original_study", "+original_study=serial_cpu"])
    gpu = compose_run(["experiment=original_study", "+original_study=single_gpu"])
    ddp = compose_run(["experiment=original_study", "+original_study=ddp_2gpu"])
    assert (serial.mode.name, per_device_batch(serial)) == ("cpu", 64)
    assert (gpu.mode.name, gpu.mode.device, per_device_batch(gpu)) == ("gpu", "cuda", 64)
    assert (ddp.mode.name, ddp.mode.ranks, ddp.mode.device, per_device_batch(ddp), global_batch(ddp)) == (
        "ddp", 2, "cuda", 128, 256)
    assert serial.model.pretrained and serial.hardware.name == "param_utkarsh"
    assert serial.hardware.partitions["gpu"].gpus_per_node == 2
    assert serial.hardware.partitions["cpu"].cores_per_node == 40
    # The study's recipe exactly: PIL transforms in 2 DataLoader workers, fp32, NCHW.
    assert (serial.data.pipeline, serial.data.num_workers, serial.train.precision, serial.train.channels_last) == (
        "pil", 2, "fp32", False)


def test_strong_scaling_splits_the_global_batch():
    run = compose_run(["mode=ddp", "mode.ranks=4", "batch_size=global_256"])
    assert (per_device_batch(run), global_batch(run)) == (64, 256)
    weak = compose_run(["mode=ddp", "mode.ranks=4", "batch_size=per_device_64"])
    assert (per_device_batch(weak), global_batch(weak)) == (64, 256)


@pytest.mark.parametrize(
    ("overrides", "error", "names"),
    [
        (["train.epochs=0"], ConfigError, "train.epochs"),
        (["batch_size.size=-1"], ConfigError, "batch_size.size"),
        (["mode=ddp", "mode.ranks=3", "batch_size=global_128"], ConfigError, "mode.ranks=3"),
        (["mode.ranks=2"], ConfigError, "mode=ddp"),
        (["model.name=vgg"], ConfigError, "model.name"),
    ],
)
def test_range_errors_name_the_key(overrides, error, names):
    with pytest.raises(error, match=names.replace(".", r"\.")):
        compose_run(overrides)


def test_schema_rejects_misspelled_keys_and_wrong_types():
    with pytest.raises(ConfigCompositionException) as misspelled:
        compose_config(["train.epoch=3"])
    assert isinstance(misspelled.value.__cause__, ConfigAttributeError)
    with pytest.raises(ConfigCompositionException) as wrong_type:
        compose_config(["train.epochs=many"])
    assert isinstance(wrong_type.value.__cause__, ValidationError)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.epoch=3", "Key 'epoch' not in 'TrainConfig'"),
        ("train.epochs=many", "train.epochs"),
        ("mode=gpux", "Could not find 'mode/gpux'"),
        ("batch_size.size=0", "batch_size.size must be positive, got 0"),
        ("+trian.epochs=2", "Key 'trian' not in 'RunConfig'"),
    ],
)
def test_cli_bad_input_is_one_line_and_nonzero(tmp_path, override, expected):
    result = run_cli([override], tmp_path, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hpcbench-train: error:") and expected in lines[0]
    assert not (tmp_path / "outputs" / "runs").exists() or not list((tmp_path / "outputs").rglob("summary.json"))
