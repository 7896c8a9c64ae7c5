"""The report's figures (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from hpcbench.report.limits import NetworkLimit  # noqa: E402
from hpcbench.report.scaling import PREDICT_UP_TO, ScalingFit  # noqa: E402

FIGSIZE = (7.0, 4.5)
LEGEND_RUNS = 20  # curves_plot names each run in its legend up to this many runs
DPI = 100
PNG_METADATA = {"Software": None}  # no version string: identical inputs give identical files


def _save(figure, path: Path) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI, metadata=PNG_METADATA)
    plt.close(figure)
    return path.name


def _series_label(study_names: Dict[str, str], study: str, device: str, scaling: str) -> str:
    return f"{study_names[study]} {device} ({scaling})"


def speedup_plot(table: pd.DataFrame, fits: List[ScalingFit], limits: List[NetworkLimit], study_names: Dict[str, str],
                 path: Path) -> str:
    figure, axis = plt.subplots(figsize=FIGSIZE)
    top = max(PREDICT_UP_TO, int(table["devices"].max()))
    ideal = np.array([1, top])
    devices = np.unique(np.geomspace(1, top, 40).round())
    axis.plot(ideal, ideal, color="grey", linestyle=":", label="ideal (linear)")
    for (study, device, scaling), group in table.dropna(subset=["scaling_speedup"]).groupby(["study", "device", "scaling"], sort=True):
        label = _series_label(study_names, study, device, scaling)
        axis.plot(group["devices"], group["scaling_speedup"], marker="o", linestyle="-", label=f"{label}: measured")
    for fit in fits:
        axis.plot(devices, fit.predict(devices), linestyle="--",
                  label=f"{_series_label(study_names, fit.study, fit.device, fit.scaling)}: {fit.law} model, p={fit.parallel_fraction:.3f}")
    for limit in limits:
        label = _series_label(study_names, limit.study, limit.device, limit.scaling)
        for overlap, style in ((False, (0, (1, 1))), (True, (0, (5, 1, 1, 1)))):
            axis.plot(devices, limit.speedup(devices, overlap), linestyle=style, linewidth=1,
                      label=f"{label}: network-bound limit, {'perfect' if overlap else 'no'} overlap "
                            f"({limit.busbw_gbps:.2g} GB/s bus)")
    axis.set(xscale="log", yscale="log", xlabel="devices (GPUs or CPU ranks)", ylabel="speedup over 1 device of the same type",
             title="Speedup (dashed: fitted model; dotted: limits from the probes)")
    axis.legend(fontsize=7)
    axis.grid(True, which="both", alpha=0.3)
    return _save(figure, path)


def efficiency_plot(table: pd.DataFrame, study_names: Dict[str, str], path: Path) -> str:
    figure, axis = plt.subplots(figsize=FIGSIZE)
    for (study, device, scaling), group in table.dropna(subset=["efficiency"]).groupby(["study", "device", "scaling"], sort=True):
        axis.plot(group["devices"], group["efficiency"], marker="o", label=_series_label(study_names, study, device, scaling))
    axis.axhline(1.0, color="grey", linestyle=":", label="ideal")
    axis.set(xlabel="devices", ylabel="parallel efficiency", title="Parallel efficiency", ylim=(0, None))
    axis.legend(fontsize=7)
    axis.grid(True, alpha=0.3)
    return _save(figure, path)


STEP_PHASES = [("data_step_s", "data wait"), ("compute_step_s", "forward + backward"),
               ("comm_exposed_step_s", "exposed communication"), ("optimizer_step_s", "optimizer")]


def time_breakdown_plot(table: pd.DataFrame, labels: List[str], path: Path) -> str:
    """Left: a training step's time stacked by phase; right: evaluation per epoch. One bar per
    configuration, labelled with its devices."""
    figure, (step_axis, eval_axis) = plt.subplots(1, 2, figsize=(10.0, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    x = np.arange(len(table))
    bottom = np.zeros(len(table))
    for column, name in STEP_PHASES:
        values = table[column].fillna(0.0).to_numpy(dtype=float) * 1000
        step_axis.bar(x, values, bottom=bottom, label=name)
        bottom += values
    step_axis.set_xticks(x, labels, rotation=30, ha="right", fontsize=7)
    step_axis.set(ylabel="ms per training step (mean over ranks)", title="Time per step by phase")
    step_axis.legend(fontsize=7)
    eval_axis.bar(x, table["eval_time_s"].fillna(0.0).to_numpy(dtype=float), color="C4")
    eval_axis.set_xticks(x, labels, rotation=30, ha="right", fontsize=7)
    eval_axis.set(ylabel="seconds per epoch", title="Evaluation")
    return _save(figure, path)


def curves_plot(metrics: Dict[str, List[dict]], labels: Dict[str, tuple], path: Path) -> str:
    """One curve per run. Up to LEGEND_RUNS runs the legend names each run; beyond, the runs of a
    configuration share a colour and one legend entry (a legend of 1,000 runs is unreadable, and
    drawing it took most of a large report's time)."""
    figure, (acc_axis, loss_axis) = plt.subplots(1, 2, figsize=(10.0, 4.5))
    axes = {"test_acc": acc_axis, "test_loss": loss_axis}
    if len(metrics) <= LEGEND_RUNS:
        for name in sorted(metrics):
            run, configuration = labels[name]
            epochs = [m["epoch"] for m in metrics[name]]
            for key, axis in axes.items():
                axis.plot(epochs, [m[key] for m in metrics[name]], marker=".", label=f"{run}: {configuration}")
    else:
        by_configuration: Dict[str, List[str]] = {}
        for name in sorted(metrics):
            by_configuration.setdefault(labels[name][1], []).append(name)
        for index, (configuration, names) in enumerate(sorted(by_configuration.items())):
            for key, axis in axes.items():
                lines = [[(m["epoch"], m[key]) for m in metrics[name]] for name in names]
                axis.add_collection(LineCollection(lines, colors=f"C{index % 10}", linewidths=0.6, label=configuration))
        for axis in axes.values():
            axis.autoscale()
    acc_axis.set(xlabel="epoch", ylabel="test accuracy", title="Test accuracy per epoch")
    loss_axis.set(xlabel="epoch", ylabel="test loss", title="Test loss per epoch")
    acc_axis.legend(fontsize=6)
    for axis in (acc_axis, loss_axis):
        axis.grid(True, alpha=0.3)
    return _save(figure, path)


def throughput_plot(table: pd.DataFrame, path: Path) -> str:
    figure, axis = plt.subplots(figsize=FIGSIZE)
    for (mode, device, devices), group in table.groupby(["mode", "device", "devices"], sort=True):
        group = group.sort_values("batch_per_device")
        axis.plot(group["batch_per_device"], group["samples_per_s"], marker="o", label=f"{mode} {device} x{devices}")
    axis.set(xscale="log", xlabel="batch per device", ylabel="training images / s (all devices)",
             title="Throughput vs batch size")
    axis.legend(fontsize=7)
    axis.grid(True, which="both", alpha=0.3)
    return _save(figure, path)
