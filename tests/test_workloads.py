"""Workloads beyond the reference one, end to end: torchvision's ResNet-50, EfficientNet-B0 and
ViT-B/16, and a user's own model and data (examples/custom_workload, run with the README's
commands): trained serially and with 2 DDP ranks, reported, and served."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import REPO, TINY, compose_run, read_json, run_cli, run_dirs
from PIL import Image

from hpcbench.data.pipeline import build_pipeline
from hpcbench.models import build_configured_model
from hpcbench.rundir import read_resolved_config
from hpcbench.training.trainer import fit

pytestmark = pytest.mark.slow

EXAMPLE = REPO / "examples" / "custom_workload"
EXAMPLE_ENV = {"PYTHONPATH": str(EXAMPLE)}
# The README's command with the tests' tiny settings (its data set is 512 + 128 images of 32 px).
CUSTOM = ["--config-dir", str(EXAMPLE / "conf"), "model=small_cnn", "train.lr=0.003", "batch_size=per_device_32",
          "train.probe=false", "data.num_workers=0"]


@pytest.fixture
def example_importable(monkeypatch):
    """The example package importable in this process, as PYTHONPATH makes it for the CLI."""
    monkeypatch.syspath_prepend(str(EXAMPLE))


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_b0", "vit_b_16"])
def test_the_study_s_next_architectures_train(name, tmp_path):
    run = compose_run([*TINY, f"model={name}", "train.epochs=1", "train.save_checkpoints=false"])
    summary = fit(run, tmp_path / "run")
    assert (summary.status, summary.model, summary.epochs) == ("completed", name, 1)
    assert summary.best_test_acc is not None


def test_an_architecture_trains_with_two_ddp_ranks(tmp_path):
    result = run_cli([*TINY, "model=efficientnet_b0", "mode=ddp", "mode.ranks=2", "mode.device=cpu",
                      "train.epochs=1", "train.save_checkpoints=false"], tmp_path)
    assert result.returncode == 0, result.stderr
    [run_dir] = run_dirs(tmp_path / "outputs")
    summary = read_json(run_dir / "summary.json")
    assert (summary["status"], summary["model"], summary["world_size"]) == ("completed", "efficientnet_b0", 2)


def _predict(run_dir: Path, images: list[Path]) -> list[dict]:
    result = run_cli([str(run_dir), *map(str, images), "--json"], run_dir.parent, timeout=120, env=EXAMPLE_ENV,
                     module="hpcbench.serve.predict_cli")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _offline_top3(run_dir: Path) -> tuple[list[list[int]], torch.Tensor]:
    """Top-3 class indices of the run's own test batches under its best checkpoint."""
    run = read_resolved_config(run_dir)
    pipeline = build_pipeline(run, 0, 1, torch.device("cpu"))
    images = torch.cat([batch for batch, _ in pipeline.test_loader])
    checkpoint = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    model = build_configured_model(run.model, len(checkpoint["classes"]), run.data.image_size)
    model.load_state_dict(checkpoint["model"])
    with torch.no_grad():
        return model.eval()(images).topk(3).indices.tolist(), images


def test_the_custom_example_trains_serially_and_with_two_ranks_and_is_reported_and_served(tmp_path,
                                                                                          example_importable):
    from custom_workload.data import build as build_stripes

    serial = run_cli([*CUSTOM, "data=stripes", "train.epochs=3", "experiment_name=serial"], tmp_path, env=EXAMPLE_ENV)
    assert serial.returncode == 0, serial.stderr
    ddp = run_cli([*CUSTOM, "data=stripes", "train.epochs=3", "mode=ddp", "mode.ranks=2", "mode.device=cpu",
                   "experiment_name=ddp"], tmp_path, env=EXAMPLE_ENV)
    assert ddp.returncode == 0, ddp.stderr
    runs = {read_json(d / "summary.json")["world_size"]: d for d in run_dirs(tmp_path / "outputs")}
    for run_dir in runs.values():
        summary = read_json(run_dir / "summary.json")
        assert (summary["status"], summary["model"], summary["dataset"]) == ("completed", "small_cnn", "stripes")
        assert summary["pipeline"] == "tensor"  # uint8 arrays of one size: data.pipeline=auto keeps them resident
        assert summary["best_test_acc"] > 0.45, summary  # 4 classes: chance is 0.25
    assert sorted(runs) == [1, 2]

    report = run_cli([str(tmp_path / "outputs"), "--out", str(tmp_path / "report")], tmp_path,
                     module="hpcbench.report.cli")
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "report" / "report.md").read_text()
    assert "small_cnn" in text and "stripes" in text

    # Serving: the test images as PNG files (lossless), classified by hpcbench-predict, equal the
    # top-3 of an offline evaluation of the best checkpoint on the run's own test batches.
    run_dir = runs[1]
    offline, _ = _offline_top3(run_dir)
    _, test_set, classes = build_stripes(**read_resolved_config(run_dir).data.args)
    files = []
    for index in range(len(offline)):
        files.append(tmp_path / f"test-{index}.png")
        Image.fromarray(test_set[index][0]).save(files[-1])
    served = _predict(run_dir, files)
    assert [[entry["class"] for entry in s["top"]] for s in served] == [[classes[i] for i in top] for top in offline]


def test_custom_images_of_several_sizes_go_through_dataloader_workers_and_serve_alike(tmp_path, example_importable):
    from hpcbench.serve.predictor import Predictor

    result = run_cli([*CUSTOM, "data=stripes_sizes", "train.epochs=1"], tmp_path, env=EXAMPLE_ENV)
    assert result.returncode == 0, result.stderr
    assert "data.pipeline=auto: pil, the images are not all of one size" in result.stderr
    [run_dir] = run_dirs(tmp_path / "outputs")
    assert read_json(run_dir / "summary.json")["pipeline"] == "pil"

    run = read_resolved_config(run_dir)
    from custom_workload.data import build as build_stripes

    _, test_set, _ = build_stripes(**run.data.args)
    _, evaluated = _offline_top3(run_dir)
    predictor = Predictor(run_dir, device="cpu")
    served = torch.stack([predictor.transform(predictor.prepare(test_set[i][0])) for i in range(len(evaluated))])
    assert {test_set[i][0].size for i in range(len(evaluated))} != {(32, 32)}  # the resize is part of it
    assert (served - evaluated).abs().max().item() == 0.0


@pytest.mark.parametrize("overrides, message", [
    (["data=stripes_sizes", "data.pipeline=tensor"], "the tensor pipeline needs images of one size"),
    (["data=stripes", "model._target_=custom_workload.nets.missing"], "model._target_=custom_workload.nets.missing "
                                                                      "failed"),
    (["data=stripes", "+model.args.colour=red"], "model._target_=custom_workload.nets.build failed: TypeError"),
    (["data=stripes", "model.pretrained=true"], "load your own weights in that function"),
    (["data=stripes", "data._target_=builtins.dict"], "must return (train, test, class names), got dict"),
])
def test_mistakes_in_a_custom_workload_stop_the_run_in_one_line(overrides, message, tmp_path):
    result = run_cli([*CUSTOM, *overrides, "train.epochs=1"], tmp_path, env=EXAMPLE_ENV, timeout=120)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
