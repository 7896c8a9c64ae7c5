"""The report's figures (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

from hpcbench.report.limits import NetworkLimit  # noqa: E402
from hpcbench.report.scaling import ScalingFit  # noqa: E402

FIGSIZE = (10.0, 4.5)  # the axes, and the legend right of them (outside the data)
LEGEND_RUNS = 20  # curves_plot names each run in its legend up to this many runs
SERIES_PER_PLOT = 4  # more (study, device, scaling) series than this: one speedup, efficiency and throughput plot per study
LABELLED_BARS = 8  # the evaluation panel names its bars up to this many configurations
DPI = 100
PNG_METADATA = {"Software": None}  # no version string: identical inputs give identical files
MODEL_ALPHA, LIMIT_ALPHA = 0.55, 0.12  # fitted models faint, the limits' bands fainter: the measurements first

Series = Tuple[str, str, str]  # (study, device, scaling)
Drawing = Tuple[str, Callable[..., str], tuple]  # (title, one of the plot functions below, its arguments)


# The axes' place in the figure, fixed (matplotlib's constrained layout measures every text twice:
# a third of a large report's plotting time), with the legend's column right of them.
MARGINS = {"left": 0.08, "bottom": 0.12, "top": 0.91, "wspace": 0.25}
LEGEND_FROM = 0.73  # the legend's column starts here (a fraction of the figure's width)


def _figure(columns: int = 1, legend: bool = True, bottom: float = MARGINS["bottom"], **options):
    figure, axes = plt.subplots(1, columns, figsize=FIGSIZE, **options)
    figure.subplots_adjust(**{**MARGINS, "bottom": bottom}, right=LEGEND_FROM - 0.02 if legend else 0.98)
    return figure, axes


def _save(figure, path: Path) -> str:
    figure.savefig(path, dpi=DPI, metadata=PNG_METADATA)
    plt.close(figure)
    return path.name


def _legend_outside(figure, axis=None, fontsize: int = 7) -> None:
    """The legend in its column right of the axes; of `axis` alone where every panel draws the
    same series."""
    figure.legend(*(axis.get_legend_handles_labels() if axis is not None else ()), loc="upper left",
                  bbox_to_anchor=(LEGEND_FROM, MARGINS["top"]), fontsize=fontsize, frameon=False)


def _series_label(study_names: Dict[str, str], series: Series) -> str:
    study, device, scaling = series
    return f"{study_names[study]} {device} ({scaling})"


def _powers_of_two_axis(axis, top: int, bottom: int = 1) -> None:
    """x on a log axis with plain ticks at the powers of two from `bottom` to `top` (devices, batch sizes)."""
    low, high = math.floor(math.log2(bottom)), math.ceil(math.log2(top))  # 6 GPUs: ticks to 8
    ticks = [2 ** k for k in range(low, high + 1)]
    axis.set_xscale("log")
    axis.set_xlim(2 ** low / 1.2, 2 ** high * 1.2)
    axis.set_xticks(ticks, [str(t) for t in ticks])
    axis.xaxis.set_minor_locator(NullLocator())


def by_study(table: pd.DataFrame, study_names: Dict[str, str]) -> List[Tuple[str, pd.DataFrame]]:
    """(file name suffix, rows) of each scaling plot: one plot of every series while they are few,
    else one per study ("" or "_S1", "_S2", ...)."""
    if table.groupby(["study", "device", "scaling"]).ngroups <= SERIES_PER_PLOT:
        return [("", table)]
    return [(f"_{study_names[study]}", group) for study, group in table.groupby("study", sort=True)]


def speedup_plot(table: pd.DataFrame, fits: List[ScalingFit], limits: List[NetworkLimit], study_names: Dict[str, str],
                 path: Path) -> str:
    """The measured speedups first; each series' fitted model (dashed) and its network-bound limit
    (a band from no overlap to perfect overlap) faint in its colour, over the measured device
    counts and one doubling beyond (further out they are extrapolations: the prediction table)."""
    figure, axis = _figure()
    measured = table.dropna(subset=["scaling_speedup"])
    top = 2 * max(1, int(table["devices"].max()))
    devices = np.geomspace(1, top, 60)
    axis.plot([1, top], [1, top], color="grey", linestyle=":", linewidth=1, label="ideal (linear)")
    series = sorted(table.groupby(["study", "device", "scaling"]).groups)
    colour = {key: f"C{index % 10}" for index, key in enumerate(series)}
    for key, group in measured.groupby(["study", "device", "scaling"], sort=True):
        axis.plot(group["devices"], group["scaling_speedup"], marker="o", linewidth=2, color=colour[key],
                  label=f"{_series_label(study_names, key)}: measured")
    for fit in (f for f in fits if (f.study, f.device, f.scaling) in colour):
        key = (fit.study, fit.device, fit.scaling)
        axis.plot(devices, fit.predict(devices), linestyle="--", linewidth=1, alpha=MODEL_ALPHA, color=colour[key],
                  label=f"{_series_label(study_names, key)}: {fit.law}, p={fit.parallel_fraction:.3f}")
    for limit in (m for m in limits if (m.study, m.device, m.scaling) in colour):
        key = (limit.study, limit.device, limit.scaling)
        axis.fill_between(devices, limit.speedup(devices, False), limit.speedup(devices, True), color=colour[key],
                          alpha=LIMIT_ALPHA, linewidth=0,
                          label=f"{_series_label(study_names, key)}: network limit, {limit.busbw_gbps:.2g} GB/s")
    _powers_of_two_axis(axis, top)
    axis.set_yscale("log")
    low, high = axis.get_ylim()
    low = 2.0 ** math.floor(math.log2(low))  # a labelled tick below the lowest point (a slowdown: 0.5)
    ticks = [2.0 ** k for k in range(round(math.log2(low)), math.ceil(math.log2(high)) + 1)]
    axis.set_yticks(ticks, [f"{t:g}" for t in ticks])
    axis.yaxis.set_minor_locator(NullLocator())
    axis.set_ylim(low / 1.1, high)
    axis.set(xlabel="devices (GPUs or CPU ranks)", ylabel="speedup over 1 device of the same type",
             title="Speedup (dashed: fitted law; band: network-bound limit, no to perfect overlap)")
    axis.grid(True, which="major", alpha=0.3)
    _legend_outside(figure)
    return _save(figure, path)


def efficiency_plot(table: pd.DataFrame, study_names: Dict[str, str], path: Path) -> str:
    figure, axis = _figure()
    measured = table.dropna(subset=["efficiency"])
    for key, group in measured.groupby(["study", "device", "scaling"], sort=True):
        axis.plot(group["devices"], group["efficiency"], marker="o", linewidth=2, label=_series_label(study_names, key))
    axis.axhline(1.0, color="grey", linestyle=":", linewidth=1, label="ideal")
    _powers_of_two_axis(axis, max(1, int(table["devices"].max())))
    top = max([1.1, *(measured["efficiency"] * 1.05)])  # a superlinear point stays in view
    axis.set(xlabel="devices", ylabel="parallel efficiency", title="Parallel efficiency", ylim=(0, top))
    axis.grid(True, alpha=0.3)
    _legend_outside(figure)
    return _save(figure, path)


STEP_PHASES = [("data_step_s", "data wait"), ("compute_step_s", "forward + backward"),
               ("comm_exposed_step_s", "exposed communication"), ("optimizer_step_s", "optimizer")]


def time_breakdown_plot(table: pd.DataFrame, labels: List[str], path: Path) -> str:
    """Left: a training step's time stacked by phase; right: evaluation per epoch. One bar per
    configuration, labelled with its devices."""
    figure, (step_axis, eval_axis) = _figure(2, legend=False, bottom=0.2, gridspec_kw={"width_ratios": [3, 1]})
    x = np.arange(len(table))
    bottom = np.zeros(len(table))
    for column, name in STEP_PHASES:
        values = table[column].fillna(0.0).to_numpy(dtype=float) * 1000
        step_axis.bar(x, values, bottom=bottom, label=name)
        bottom += values
    step_axis.set_xticks(x, labels, rotation=30, ha="right", fontsize=7)
    step_axis.set(ylabel="ms per training step (mean over ranks)", title="Time per step by phase")
    if bottom.any():
        step_axis.legend(fontsize=7)
    else:  # runs of an older hpcbench, or imported logs: an empty axis would look like a measurement
        step_axis.text(0.5, 0.5, "these runs recorded no step phases", transform=step_axis.transAxes, ha="center")
        step_axis.set_yticks([])
    eval_axis.bar(x, table["eval_time_s"].fillna(0.0).to_numpy(dtype=float), color="C4")
    if len(labels) <= LABELLED_BARS:
        eval_axis.set_xticks(x, labels, rotation=30, ha="right", fontsize=7)
    else:  # its narrow panel cannot hold the names: the same bars in the same order as the left one's
        eval_axis.set_xticks(x, [""] * len(x))
        eval_axis.set_xlabel("configurations as on the left", fontsize=7)
    eval_axis.set(ylabel="seconds per epoch", title="Evaluation")
    return _save(figure, path)


def curves_plot(metrics: Dict[str, List[dict]], labels: Dict[str, tuple], path: Path) -> str:
    """One curve per run. Up to LEGEND_RUNS runs the legend names each run; beyond, the runs of a
    configuration share a colour and one legend entry (a legend of 1,000 runs is unreadable, and
    drawing it took most of a large report's time)."""
    figure, (acc_axis, loss_axis) = _figure(2)
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
    for axis in (acc_axis, loss_axis):
        axis.grid(True, alpha=0.3)
    _legend_outside(figure, acc_axis, fontsize=6)
    return _save(figure, path)


def throughput_plot(table: pd.DataFrame, study_names: Dict[str, str], path: Path) -> str:
    """A line per study and device layout over the batch sizes it ran (a line never joins two
    studies' models)."""
    figure, axis = _figure()
    studies = table["study"].nunique()
    for (study, mode, device, devices), group in table.groupby(["study", "mode", "device", "devices"], sort=True):
        group = group.sort_values("batch_per_device")
        name = f"{study_names[study]} " if studies > 1 else ""
        axis.plot(group["batch_per_device"], group["samples_per_s"], marker="o", label=f"{name}{mode} {device} x{devices}")
    batches = table["batch_per_device"]
    _powers_of_two_axis(axis, max(1, int(batches.max())), max(1, int(batches.min())))
    axis.set(xlabel="batch per device", ylabel="training images / s (all devices)", title="Throughput vs batch size")
    axis.grid(True, alpha=0.3)
    _legend_outside(figure)
    return _save(figure, path)


def draw(drawings: List[Drawing]) -> Dict[str, str]:
    """title -> file name of each figure, drawn and saved by a process a core: drawing is most of a
    report's time after its imports (1,000 runs: 1.1 s for 5 figures on one core of the 2-core
    Xeon). Forked, so each drawer starts with matplotlib imported."""
    workers = min(os.cpu_count() or 1, len(drawings))
    if workers < 2:
        return {title: plot(*arguments) for title, plot, arguments in drawings}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        drawn = {title: pool.submit(plot, *arguments) for title, plot, arguments in drawings}
        return {title: future.result() for title, future in drawn.items()}
