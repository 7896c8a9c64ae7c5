"""The analysis: exact scaling math on hand-built run directories, robustness, determinism, plots."""
from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import ORIGINAL, make_run, run_cli, table_rows
from scipy import stats

from hpcbench.report import load_runs
from hpcbench.report.cli import write_report
from hpcbench.report.scaling import fit_law


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
    assert table.loc["ddp", "acc_diff"] == pytest.approx(0.9558 - 0.9617, abs=1e-6)
    assert not table["acc_flag"].any()  # within 1 point, and not significant

    report = (out / "report.md").read_text()
    rows = table_rows(report, "## Summary (the original study's table)")
    # Single runs: no interval on time; Wilson's on an accuracy of 10,000 test images.
    assert rows[0][:6] == ["S1", "Serial CPU", "Xeon Gold 6248 (param_utkarsh)", "Serial", "64", "515.90 (n=1)"]
    assert rows[0][6].startswith("0.9617 [0.9578, 0.9653] (n=1)") and rows[0][7] == "1.00x"
    assert rows[1][1:3] == ["Single GPU", "1x Tesla V100-SXM2-16GB"] and rows[1][7] == "2.89x"
    assert rows[2][1:6] == ["MPI + DDP (2 GPUs, 1 node)", "2x Tesla V100-SXM2-16GB", "Data parallel, weak scaling",
                            "128", "87.00 (n=1)"] and rows[2][7] == "5.93x"
    assert "weak scaling (per-device batch fixed; judged on throughput (samples/s))" in report


def test_a_difference_beyond_the_tolerance_but_within_noise_is_not_flagged(original_study, tmp_path):
    # -0.59 points on 10,000 test images: p = 0.036 alone, 0.072 after Holm over the two comparisons.
    write_report([original_study], tmp_path / "strict", tolerance=0.005)
    table = scaling_table(tmp_path / "strict")
    assert table.loc["ddp", "acc_p"] == pytest.approx(0.036, abs=0.002)
    assert table.loc["ddp", "acc_p_holm"] == pytest.approx(2 * table.loc["ddp", "acc_p"])
    assert not table["acc_flag"].any()
    [ddp] = [row for row in table_rows((tmp_path / "strict" / "report.md").read_text(), "## Accuracy parity")
             if row[1].startswith("MPI")]
    assert ddp[5] == "-0.59 pt [-1.14, -0.04]" and ddp[6] == "two-proportion" and ddp[-1] == "no"


def test_a_significant_drop_beyond_the_tolerance_is_flagged(tmp_path):
    sweep = tmp_path / "degraded"
    for name, overrides, minutes, best, rate in ORIGINAL[:2]:
        make_run(sweep, name, overrides, minutes, best, rate)
    make_run(sweep, "ddp_2gpu", ["+original_study=ddp_2gpu"], 87.0, 0.90, 198.0)  # 6 points worse
    write_report([sweep], tmp_path / "out")
    table = scaling_table(tmp_path / "out")
    assert table.loc["ddp", "acc_flag"] and table.loc["ddp", "acc_p_holm"] < 1e-10
    assert "**flagged**" in (tmp_path / "out" / "report.md").read_text()


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
    half = stats.t.ppf(0.975, 1) * np.std([10.0, 30.0], ddof=1) / np.sqrt(2)  # Student t, 1 degree of freedom
    [gpu] = [row for row in table_rows(report, "## Summary") if row[1] == "Single GPU"]
    assert gpu[5] == f"20.00 [{20 - half:.2f}, {20 + half:.2f}] (n=2)"


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
    problems = {run: (status, reason) for run, status, reason in table_rows(report, "## Failed or incomplete runs")}
    for name, reason in [("failed", "failed"), ("running", "running"), ("corrupt_summary", "not valid JSON"),
                         ("truncated_metrics", "truncated or corrupt"), ("no_summary", "no summary.json"),
                         ("no_metrics", "missing metrics.jsonl")]:
        assert reason in problems[f"original/{name}"][1], (name, problems)
    assert len(load_runs(original_study)) == 3  # the complete ones still make the tables
    assert [row[1] for row in table_rows(report, "## Summary")] == ["Serial CPU", "Single GPU", "MPI + DDP (2 GPUs, 1 node)"]


def test_empty_directory_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli([str(tmp_path / "empty"), "--out", str(tmp_path / "out")], tmp_path, module="hpcbench.report.cli")
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
        assert (width, height) == (1000, 450)  # FIGSIZE at DPI: the legend beside the axes, not over the data


def test_same_inputs_give_byte_identical_markdown_and_csv(original_study, tmp_path):
    write_report([original_study], tmp_path / "a")
    write_report([original_study], tmp_path / "b")
    for name in ("report.md", "runs.csv", "scaling.csv", "studies.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_many_studies_get_a_plot_each_whose_axes_fit_the_measurements(tmp_path, monkeypatch):
    from hpcbench.report import plots

    sweep = tmp_path / "sweep"
    for model in ("mobilenet_v2", "resnet18", "resnet50"):
        make_run(sweep, f"{model}_cpu", ["+original_study=serial_cpu", f"model={model}"], 500.0, 0.96, 32.0)
        make_run(sweep, f"{model}_gpu", ["+original_study=single_gpu", f"model={model}"], 180.0, 0.96, 95.0)
        make_run(sweep, f"{model}_ddp", ["+original_study=ddp_2gpu", f"model={model}", "mode.ranks=4"], 50.0, 0.96, 360.0)
    figures = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: figures.append((path.name, figure)) or path.name)
    # drawn in this process (not a process a core), to look at the figures
    monkeypatch.setattr(plots, "draw", lambda drawings: {title: plot(*arguments) for title, plot, arguments in drawings})
    write_report([sweep], tmp_path / "out")
    speedups = {name: figure for name, figure in figures if name.startswith("speedup")}
    assert sorted(speedups) == ["speedup_S1.png", "speedup_S2.png", "speedup_S3.png"]  # 6 series: one plot a study
    assert {"efficiency_S1.png", "efficiency_S3.png", "throughput_S1.png", "throughput_S3.png"} <= {n for n, _ in figures}
    # A throughput line joins one study's batch sizes, never another model's point at the same batch.
    throughput = dict(figures)["throughput_S2.png"].axes[0]
    assert all(len(line.get_xdata()) == 1 for line in throughput.get_lines())
    axis = speedups["speedup_S1.png"].axes[0]
    assert axis.get_xlim()[1] == pytest.approx(8 * 1.2)  # 4 devices measured: drawn up to one doubling beyond
    assert max(max(line.get_xdata()) for line in axis.get_lines()) == pytest.approx(8)
    assert not axis.get_legend()  # the figure's legend, beside the axes
    assert "Speedup vs devices: S2" in (tmp_path / "out" / "report.md").read_text()
