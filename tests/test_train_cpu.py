"""Real single-process training runs on the CPU (tiny settings) and the run directory contract."""
from __future__ import annotations

import math

import pytest
import torch
from helpers import TINY, compose_run, read_json, read_metrics, run_cli, run_dirs

from hpcbench.rundir import EpochMetrics, RunSummary
from hpcbench.training.trainer import fit

pytestmark = pytest.mark.slow

METRIC_KEYS = set(EpochMetrics.__dataclass_fields__)
SUMMARY_KEYS = set(RunSummary.__dataclass_fields__)


def _train_in_process(tmp_path, overrides, name="run"):
    run = compose_run([*TINY, *overrides])
    out = tmp_path / name
    summary = fit(run, out)
    return out, summary


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One `hpcbench-train TINY` run, read by the tests below (each reads, none writes)."""
    root = tmp_path_factory.mktemp("cli")
    result = run_cli(TINY, root)
    assert result.returncode == 0, result.stderr
    [run_dir] = run_dirs(root / "outputs")
    return run_dir


def test_cli_run_writes_a_complete_run_directory(cli_run):
    run_dir = cli_run
    for name in [".hydra/config.yaml", ".hydra/overrides.yaml", "resolved_config.yaml", "metrics.jsonl",
                 "summary.json", "env.json", "checkpoints/best.pt", "train.log"]:
        assert (run_dir / name).is_file(), name
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["best.pt"]  # train.keep_checkpoints=best

    metrics = read_metrics(run_dir)
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:
        assert set(m) == METRIC_KEYS
        assert all(math.isfinite(m[k]) for k in ("train_loss", "test_loss", "epoch_time_s", "samples_per_s"))
        assert 0 <= m["train_acc"] <= 1 and 0 <= m["test_acc"] <= 1
        assert m["samples_per_s"] > 0 and m["peak_memory_mb"] > 0 and m["lr"] == pytest.approx(1e-4)
        parts = m["data_time_s"] + m["compute_time_s"] + m["comm_exposed_s"] + m["optimizer_time_s"]
        assert parts == pytest.approx(m["train_time_s"], rel=0.05) and m["comm_exposed_s"] == 0

    summary = read_json(run_dir / "summary.json")
    assert set(summary) == SUMMARY_KEYS
    assert summary["status"] == "completed" and summary["epochs"] == 2 and summary["epochs_planned"] == 2
    assert (summary["mode"], summary["world_size"], summary["device"]) == ("cpu", 1, "cpu")
    assert summary["best_test_acc"] == max(m["test_acc"] for m in metrics)
    assert summary["final_test_acc"] == metrics[-1]["test_acc"]
    assert summary["train_images"] == 128 and summary["test_images"] == 64
    assert summary["total_time_s"] >= sum(m["epoch_time_s"] for m in metrics) * 0.99

    env = read_json(run_dir / "env.json")
    for key in ("hostname", "cpu_model", "cpu_cores_available", "python", "torch", "torchvision", "git", "slurm"):
        assert key in env
    assert env["git"]["commit"] is None or len(env["git"]["commit"]) == 40

    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == summary["best_epoch"] and best["test_acc"] == summary["best_test_acc"]
    assert len(best["classes"]) == 10
    assert "epoch 2/2" in (run_dir / "train.log").read_text()


def test_same_config_and_seed_give_identical_metrics(tmp_path, cli_run):
    again, _ = _train_in_process(tmp_path, [], "again")  # in this process, the CLI's run in another
    keys = ("train_loss", "train_acc", "test_loss", "test_acc", "lr")
    assert [[m[k] for k in keys] for m in read_metrics(cli_run)] == [[m[k] for k in keys] for m in read_metrics(again)]


def test_a_run_is_rerun_exactly_from_its_directory(tmp_path, cli_run):
    original = cli_run
    rerun_dir = tmp_path / "rerun"
    # The documented command (README, "Re-running a run").
    result = run_cli(["--config-dir", str(original), "--config-name", "resolved_config", f"hydra.run.dir={rerun_dir}"],
                     tmp_path)
    assert result.returncode == 0, result.stderr
    keys = ("train_loss", "train_acc", "test_loss", "test_acc", "lr")
    assert [[m[k] for k in keys] for m in read_metrics(original)] == [[m[k] for k in keys] for m in read_metrics(rerun_dir)]


def test_failed_run_records_status_and_error(tmp_path):
    result = run_cli([*TINY, "data=image_folder", f"data.root={tmp_path / 'nowhere'}"], tmp_path)
    assert result.returncode == 1
    assert "nowhere/train does not exist" in result.stderr.strip().splitlines()[-1]
    [run_dir] = run_dirs(tmp_path / "outputs")
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "failed" and "nowhere/train does not exist" in summary["error"]


def test_gpu_mode_without_cuda_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = run_cli([*TINY, "mode=gpu"], tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "needs a CUDA device" in result.stderr and "mode=cpu" in result.stderr


def test_pretrained_without_cached_weights_fails_before_training(tmp_path):
    result = run_cli([*TINY, "model.pretrained=true"], tmp_path, env={"TORCH_HOME": str(tmp_path / "torch")})
    assert result.returncode == 1
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth") in result.stderr
    assert not list((tmp_path / "outputs").rglob("metrics.jsonl"))
