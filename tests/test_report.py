"""The analysis: exact scaling math on hand-built run directories, robustness, determinism, plots."""
from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import TINY, compose_run, run_cli
from omegaconf import OmegaConf

from hpcbench.report import load_runs
from hpcbench.report.cli import write_report
from hpcbench.report.scaling import fit_law
from hpcbench.rundir import EpochMetrics, RunSummary

ORIGINAL = [  # name, overrides, minutes, best accuracy, samples/s
    ("serial_cpu", ["+original_study=serial_cpu"], 515.9, 0.9617, 32.0),
    ("single_gpu", ["+original_study=single_gpu"], 178.3, 0.9603, 95.0),
    ("ddp_2gpu", ["+original_study=ddp_2gpu"], 87.0, 0.9558, 198.0),
]


def make_run(root: Path, name: str, overrides: list[str], minutes: float, best: float, rate: float,
             epochs: int = 20, status: str = "completed", gpu: str = "Tesla V100-SXM2-16GB") -> Path:
    """A run directory as hpcbench-train writes it, with chosen times and accuracies."""
    run = compose_run(["experiment=original_study", *overrides])
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "resolved_config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(run)))
    per_epoch = minutes * 60 / epochs
    metrics = [EpochMetrics(epoch=e, train_loss=1.0 / e, train_acc=best - 0.01, test_loss=0.5 / e,
                            test_acc=best if e == epochs else best - 0.02, lr=1e-4, epoch_time_s=per_epoch,
                            train_time_s=per_epoch * 0.9, eval_time_s=per_epoch * 0.1, data_time_s=per_epoch * 0.5,
                            compute_time_s=per_epoch * 0.4, samples_per_s=rate, peak_memory_mb=1000.0)
               for e in range(1, epochs + 1)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(asdict(m)) + "\n" for m in metrics))
    ranks = run.mode.ranks
    summary = RunSummary(status=status, mode=run.mode.name, device=run.mode.device, world_size=ranks, nodes=1,
                         ranks_per_node=ranks, model="mobilenet_v2", dataset="cifar10", image_size=224, scaling="weak",
                         batch_per_device=run.batch_size.size, global_batch=run.batch_size.size * ranks,
                         epochs_planned=epochs, epochs=epochs, total_time_s=minutes * 60, samples_per_s=rate,
                         best_test_acc=best, best_epoch=epochs, final_test_acc=best, started_at="2024-01-01T00:00:00",
                         finished_at="2024-01-02T00:00:00")
    (run_dir / "summary.json").write_text(json.dumps(asdict(summary)))
    gpus = [gpu] * ranks if run.mode.device == "cuda" else []
    (run_dir / "env.json").write_text(json.dumps({"hostname": "node1", "cpu_model": "Xeon Gold 6248", "gpus": gpus,
                                                  "torch": "2.0", "python": "3.10", "git": {"commit": "abc", "dirty": False}}))
    return run_dir


@pytest.fixture
def original_study(tmp_path) -> Path:
    sweep = tmp_path / "original"
    for name, overrides, minutes, best, rate in ORIGINAL:
        make_run(sweep, name, overrides, minutes, best, rate)
    return sweep


def scaling_table(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "scaling.csv").set_index("mode")


def test_the_original_study_table_comes_out(original_study, tmp_path):
    out = tmp_path / "report"
    write_report([original_study], out)
    table = scaling_table(out)
    assert table.loc["cpu", "speedup"] == pytest.approx(1.0)
    assert table.loc["gpu", "speedup"] == pytest.approx(515.9 / 178.3, abs=1e-6)  # 2.89x
    assert table.loc["ddp", "speedup"] == pytest.approx(515.9 / 87.0, abs=1e-6)  # 5.93x
    # Efficiency of the 2-GPU run against the single GPU (weak scaling: throughput), never against the CPU.
    assert table.loc["ddp", "scaling_speedup"] == pytest.approx(198 / 95, abs=1e-6)
    assert table.loc["ddp", "efficiency"] == pytest.approx(198 / 95 / 2, abs=1e-6)
    assert table.loc["gpu", "efficiency"] == pytest.approx(1.0)
    assert table.loc["ddp", "acc_delta"] == pytest.approx(0.9558 - 0.9617, abs=1e-6)
    assert not table["acc_flag"].any()  # within 1 point

    report = (out / "report.md").read_text()
    assert "| Study | Execution mode | Hardware | Training type | Batch/device | Total time (min) | Best test accuracy | Speedup |" in report
    assert "| S1 | Serial CPU | Xeon Gold 6248 (param_utkarsh) | Serial | 64 | 515.90 | 0.9617 | 1.00x |" in report
    assert "| S1 | Single GPU | 1x Tesla V100-SXM2-16GB | Single device | 64 | 178.30 | 0.9603 | 2.89x |" in report
    assert "| S1 | MPI + DDP (2 GPUs, 1 node) | 2x Tesla V100-SXM2-16GB | Data parallel, weak scaling | 128 | 87.00 | 0.9558 | 5.93x |" in report
    assert "weak scaling (per-device batch fixed; judged on throughput (samples/s))" in report


def test_accuracy_parity_flag_and_tolerance(original_study, tmp_path):
    write_report([original_study], tmp_path / "strict", tolerance=0.005)
    table = scaling_table(tmp_path / "strict")
    assert table.loc["ddp", "acc_flag"] and not table.loc["gpu", "acc_flag"]
    assert "MPI + DDP (2 GPUs, 1 node), batch 128/device: 0.9558" in (tmp_path / "strict" / "report.md").read_text()


def test_single_device_baseline_when_there_is_no_cpu_run(tmp_path):
    sweep = tmp_path / "gpu_only"
    for name, overrides, minutes, best, rate in ORIGINAL[1:]:
        make_run(sweep, name, overrides, minutes, best, rate)
    write_report([sweep], tmp_path / "out")
    assert scaling_table(tmp_path / "out").loc["ddp", "speedup"] == pytest.approx(178.3 / 87.0, abs=1e-6)


def test_repeats_are_averaged_with_spread_and_count(tmp_path):
    sweep = tmp_path / "repeats"
    make_run(sweep, "cpu", ["+original_study=serial_cpu"], 100.0, 0.90, 10.0)
    make_run(sweep, "gpu_seed1", ["+original_study=single_gpu", "train.seed=1"], 10.0, 0.90, 100.0)
    make_run(sweep, "gpu_seed2", ["+original_study=single_gpu", "train.seed=2"], 30.0, 0.92, 50.0)
    write_report([sweep], tmp_path / "out")
    table = scaling_table(tmp_path / "out")
    assert table.loc["gpu", "repeats"] == 2
    assert table.loc["gpu", "total_time_s"] == pytest.approx(20.0 * 60)
    assert table.loc["gpu", "speedup"] == pytest.approx(100.0 / 20.0)
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"| 20.00 ± {np.std([10.0, 30.0], ddof=1):.2f} (n=2) |" in report


@pytest.mark.parametrize(("scaling", "p"), [("strong", 0.9), ("weak", 0.8)])
def test_scaling_laws_recover_the_parallel_fraction(scaling, p):
    devices = np.array([1.0, 2.0, 4.0, 8.0])
    speedups = 1 / ((1 - p) + p / devices) if scaling == "strong" else (1 - p) + p * devices
    law, fitted = fit_law(devices, speedups, scaling)
    assert law == ("Amdahl" if scaling == "strong" else "Gustafson")
    assert fitted == pytest.approx(p, abs=1e-9)


def test_broken_and_unfinished_runs_are_listed_with_reasons(original_study, tmp_path):
    make_run(original_study, "failed", ["+original_study=serial_cpu"], 1.0, 0.1, 1.0, status="failed")
    running = make_run(original_study, "running", ["+original_study=serial_cpu"], 1.0, 0.1, 1.0, status="running")
    corrupt = make_run(original_study, "corrupt_summary", ["+original_study=serial_cpu"], 1.0, 0.1, 1.0)
    (corrupt / "summary.json").write_text('{"status": "compl')
    truncated = make_run(original_study, "truncated_metrics", ["+original_study=serial_cpu"], 1.0, 0.1, 1.0)
    text = (truncated / "metrics.jsonl").read_text()
    (truncated / "metrics.jsonl").write_text(text[: len(text) - 30])
    no_summary = make_run(original_study, "no_summary", ["+original_study=serial_cpu"], 1.0, 0.1, 1.0)
    (no_summary / "summary.json").unlink()
    no_metrics = make_run(original_study, "no_metrics", ["+original_study=serial_cpu"], 1.0, 0.1, 1.0)
    (no_metrics / "metrics.jsonl").unlink()
    (running / "metrics.jsonl").unlink()

    write_report([original_study], tmp_path / "out")
    report = (tmp_path / "out" / "report.md").read_text()
    section = report.split("## Failed or incomplete runs")[1].split("##")[0]
    for name, reason in [("failed", "failed"), ("running", "running"), ("corrupt_summary", "not valid JSON"),
                         ("truncated_metrics", "truncated or corrupt"), ("no_summary", "no summary.json"),
                         ("no_metrics", "missing metrics.jsonl")]:
        assert re.search(rf"\| original/{name} \| \w+ \| [^|]*{re.escape(reason)}", section), (name, section)
    assert len(load_runs(original_study)) == 3  # the complete ones still make the tables
    assert "| S1 | Serial CPU |" in report


def test_empty_directory_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = subprocess.run([sys.executable, "-m", "hpcbench.report.cli", str(tmp_path / "empty"), "--out",
                             str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == f"hpcbench-report: error: no run directories under {tmp_path / 'empty'}"
    assert not (tmp_path / "out").exists()


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_plots_are_pngs_and_every_link_resolves(original_study, tmp_path):
    out = tmp_path / "out"
    write_report([original_study], out)
    report = (out / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert sorted(links) == ["curves.png", "efficiency.png", "speedup.png", "throughput.png", "time_breakdown.png"]
    for link in links:
        width, height = _png_size(out / link)
        assert (width, height) == ((1000, 450) if link == "curves.png" else (700, 450))


def test_same_inputs_give_byte_identical_markdown_and_csv(original_study, tmp_path):
    write_report([original_study], tmp_path / "a")
    write_report([original_study], tmp_path / "b")
    for name in ("report.md", "runs.csv", "scaling.csv", "studies.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


@pytest.mark.slow
def test_a_real_local_sweep_then_the_report(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", *TINY, "train.epochs=1", "model=resnet18", "mode=cpu,ddp", "mode.device=cpu",
                      f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 0, result.stderr
    result = subprocess.run([sys.executable, "-m", "hpcbench.report.cli", str(sweep), "--out", str(tmp_path / "r")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    runs = pd.read_csv(tmp_path / "r" / "runs.csv")
    assert sorted(runs["world_size"]) == [1, 2]
    assert "MPI + DDP (2 CPU ranks, 1 node)" in (tmp_path / "r" / "report.md").read_text()
