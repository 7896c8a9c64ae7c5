"""hpcbench-import: the original study's own logs become run directories the report reads."""
from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from helpers import read_json, run_cli, table_rows


def _log(path: Path, minutes: float, best: float, mpi: bool = False) -> Path:
    """A log as the original study's scripts write it (20 epochs; the last one the best)."""
    per_epoch = minutes * 60 / 20
    lines = []
    for epoch in range(1, 21):
        acc = best - 0.05 + 0.05 * epoch / 20
        if mpi:
            lines.append(f"Epoch {epoch}/20 Time: {per_epoch:.2f}s Train Loss: {1 / epoch:.4f} Test Loss: "
                         f"{0.5 / epoch:.4f} Test Acc(local): {acc:.4f}")
        else:
            lines.append(f"Epoch {epoch}/20 Time: {per_epoch:.2f}s Train Loss: {1 / epoch:.4f} Train Acc: "
                         f"{acc - 0.01:.4f} Test Loss: {0.5 / epoch:.4f} Test Acc: {acc:.4f}")
    lines.append(f"Best {'local ' if mpi else ''}test accuracy: {best:.4f}")
    lines.append(f"Total training time: {minutes * 60:.2f}s ({minutes:.2f} min)")
    path.write_text("\n".join(lines) + "\n")
    return path


def _import(*args: str) -> subprocess.CompletedProcess:
    return run_cli(list(map(str, args)), Path.cwd(), timeout=120, module="hpcbench.original_logs")


def test_the_original_studys_logs_become_runs_the_report_reads(tmp_path):
    out = tmp_path / "imported"
    serial, gpu = _log(tmp_path / "serial.log", 515.92, 0.9617), _log(tmp_path / "gpu.log", 178.3, 0.9603)
    ddp = _log(tmp_path / "ddp.log", 87.0, 0.9558, mpi=True)
    for log, options in [(serial, ["--mode", "cpu", "--batch", "64", "--cpu-model", "2x Intel Xeon Gold 6248"]),
                         (gpu, ["--mode", "gpu", "--batch", "64", "--gpu-name", "Tesla V100-SXM2-16GB"]),
                         (ddp, ["--mode", "ddp", "--ranks", "2", "--batch", "128", "--gpu-name", "Tesla V100-SXM2-16GB"])]:
        result = _import(log, "--out", out, *options)
        assert result.returncode == 0, result.stderr

    summary = read_json(out / "ddp" / "summary.json")
    assert summary["accuracy_scope"] == "rank 0 shard" and summary["best_test_acc"] == 0.9558
    assert summary["samples_per_s"] is None and summary["test_images"] is None  # the log does not say
    assert summary["total_time_s"] == 87.0 * 60 and summary["world_size"] == 2 and summary["global_batch"] == 256
    config = yaml.safe_load((out / "serial" / "resolved_config.yaml").read_text())
    assert config["train"] == {"epochs": 20} and "lr" not in config["train"]  # unknown stays unknown
    assert read_json(out / "serial" / "summary.json")["accuracy_scope"] == "global"

    report_dir = tmp_path / "report"
    result = run_cli([str(out), "--out", str(report_dir)], tmp_path, module="hpcbench.report.cli")
    assert result.returncode == 0, result.stderr
    report = (report_dir / "report.md").read_text()
    rows = {row[1]: row for row in table_rows(report, "## Summary (the original study's table)")}
    assert rows["Serial CPU"][5] == "515.92 (n=1)" and rows["Serial CPU"][7] == "1.00x"
    assert rows["Single GPU"][7] == "2.89x" and rows["MPI + DDP (2 GPUs, 1 node)"][7] == "5.93x"
    assert rows["MPI + DDP (2 GPUs, 1 node)"][6] == "0.9558 (n=1) (rank 0 shard)"
    assert "rank 0's shard of the test set only (an imported MPI log): not a global accuracy" in report
    assert "No configuration could be compared with a baseline." in report  # no counts, no shard: nothing tested
    samples = {row[1]: row[3] for row in table_rows(report, "### S1 on cuda")}  # Mode, Samples/s
    assert samples == {"Single GPU": "n/a (n=1)", "MPI + DDP (2 GPUs, 1 node)": "n/a (n=1)"}


def test_bad_logs_and_occupied_targets_get_one_line_and_nothing_is_written(tmp_path):
    (tmp_path / "notes.log").write_text("loss went down\n")
    result = _import(tmp_path / "notes.log", "--out", tmp_path / "out", "--mode", "cpu", "--batch", "64")
    assert result.returncode == 2 and "not a log of the original study's scripts" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()

    good = _log(tmp_path / "serial.log", 10.0, 0.9)
    assert _import(good, "--out", tmp_path / "out", "--mode", "cpu", "--batch", "64").returncode == 0
    before = (tmp_path / "out" / "serial" / "summary.json").read_bytes()
    again = _import(good, "--out", tmp_path / "out", "--mode", "cpu", "--batch", "64")
    assert again.returncode == 2 and "exists already" in again.stderr
    assert (tmp_path / "out" / "serial" / "summary.json").read_bytes() == before
