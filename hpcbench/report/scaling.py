"""The scaling math, defined once (report.md quotes these definitions).

- A *study* is a set of runs with the same workload (model, data, image size, epochs, optimiser):
  they differ only in mode, ranks/nodes, hardware, batch size and learning-rate scaling rule.
- A *configuration* is a study x mode x device x ranks x nodes x hardware x batch x rule; its runs
  with different seeds (a `train.seed` sweep) are its repeats: tables show their mean with a 95%
  interval and n (statistics below).
- devices = ranks (GPUs, or CPU processes); the serial CPU and single-GPU runs have 1.
- speedup = baseline time / time, the baseline being the study's serial CPU configuration if it has
  one, else its single-device configuration (with the same batch when there is a choice: the same
  global batch for strong scaling, the same per-device batch for weak scaling).
- scaling speedup = over the single-device configuration of the *same device type*: for strong
  scaling (global batch fixed) on time, for weak scaling (per-device batch fixed) on throughput.
  efficiency = scaling speedup / devices. CPU->GPU gains never enter efficiency.
- accuracy difference = best test accuracy - the baseline's, flagged only when it is both
  statistically significant and larger than the tolerance (verdicts below).
- Amdahl's law (strong): S(n) = 1 / ((1 - p) + p / n); Gustafson's law (weak): S(n) = (1 - p) + p n.
  p is fitted by least squares to the measured scaling speedups.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

CONFIG_KEYS = ["study", "mode", "device", "world_size", "nodes", "hardware", "scaling", "batch_per_device", "global_batch",
               "lr_policy"]
# Kept per configuration as lists of its runs' values, for the statistics (verdicts.py).
PER_RUN = {"total_time_s": "time_runs", "samples_per_s": "rate_runs", "best_test_acc": "acc_runs",
           "test_images": "test_images_runs", "run_dir": "run_list"}
AVERAGED = ["total_time_s", "time_per_epoch_s", "samples_per_s", "best_test_acc", "final_test_acc",
            "data_step_s", "compute_step_s", "comm_exposed_step_s", "optimizer_step_s", "comm_total_step_s",
            "eval_time_s", "peak_memory_mb", "comm_exposed_share", "comm_overlap_share", "straggler_ratio",
            "grad_bytes", "flops_per_sample", "peak_tflops", "nominal_peak_tflops", "achieved_tflops", "mfu",
            "mfu_nominal", "busbw_gbps", "allreduce_latency_s", "nominal_busbw_gbps", "device_hours", "energy_j"]


def configurations(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: the mean of its repeats, with std and count."""
    if runs.empty:
        return runs
    grouped = runs.groupby(CONFIG_KEYS, sort=True, dropna=False)
    table = grouped[AVERAGED].mean()
    for column in ("total_time_s", "samples_per_s", "best_test_acc"):
        table[f"{column}_std"] = grouped[column].std(ddof=1).fillna(0.0)
    table["repeats"] = grouped.size()
    table["run_dirs"] = grouped["run_dir"].agg(lambda names: ", ".join(sorted(names)))
    for column, name in PER_RUN.items():
        table[name] = grouped[column].agg(list)
    for column in ("experiment", "model", "dataset", "image_size", "epochs", "gpu_name", "cpu_model", "ranks_per_node",
                   "device_hours_unit", "energy_source", "accuracy_scope", "step_time_mean_s", "step_time_std_s",
                   "timed_steps"):
        table[column] = grouped[column].first()
    table = table.reset_index()
    table["devices"] = table["world_size"]
    return table.sort_values(["study", "device", "devices", "batch_per_device", "mode"], kind="stable").reset_index(drop=True)


def _pick(candidates: pd.DataFrame, row: pd.Series) -> Optional[pd.Series]:
    """The candidate with the same batch as `row` (global batch for strong scaling, per-device
    batch for weak scaling), else the one with the smallest batch."""
    if candidates.empty:
        return None
    key = "global_batch" if row["scaling"] == "strong" else "batch_per_device"
    same = candidates[candidates[key] == row[key]]
    chosen = same if not same.empty else candidates.sort_values(key, kind="stable")
    return chosen.iloc[0]


def _baseline(study: pd.DataFrame, row: pd.Series, baseline: str) -> Optional[pd.Series]:
    serial_cpu = study[(study["mode"] == "cpu") & (study["devices"] == 1)]
    single = study[(study["devices"] == 1) & (study["device"] != "cpu")]
    if baseline == "cpu" or (baseline == "auto" and not serial_cpu.empty):
        return _pick(serial_cpu, row)
    return _pick(single if not single.empty else study[study["devices"] == 1], row)


def single_device_of_type(study: pd.DataFrame, row: pd.Series) -> Optional[pd.Series]:
    return _pick(study[(study["devices"] == 1) & (study["device"] == row["device"])], row)


def add_scaling_columns(configs: pd.DataFrame, baseline: str = "auto") -> pd.DataFrame:
    """baseline, speedup, scaling_speedup and efficiency for every configuration."""
    table = configs.copy()
    columns: Dict[str, List] = {k: [] for k in ("baseline", "baseline_row", "speedup", "scaling_speedup", "efficiency")}
    for _, row in table.iterrows():
        study = table[table["study"] == row["study"]]
        base = _baseline(study, row, baseline)
        reference = single_device_of_type(study, row)
        columns["baseline"].append(_label(base) if base is not None else "")
        columns["baseline_row"].append(base.name if base is not None else -1)  # its index in the table
        columns["speedup"].append(base["total_time_s"] / row["total_time_s"] if base is not None else np.nan)
        if reference is None:
            scaling = np.nan
        elif row["scaling"] == "strong":
            scaling = reference["total_time_s"] / row["total_time_s"]
        else:
            scaling = row["samples_per_s"] / reference["samples_per_s"]
        columns["scaling_speedup"].append(scaling)
        columns["efficiency"].append(scaling / row["devices"] if reference is not None else np.nan)
    for name, values in columns.items():
        table[name] = values
    return table


def _label(row: pd.Series) -> str:
    return f"{row['mode']} {row['device']} x{row['devices']} batch {row['batch_per_device']}"


@dataclass
class ScalingFit:
    study: str
    device: str
    scaling: str  # strong -> Amdahl, weak -> Gustafson
    law: str
    parallel_fraction: float  # p
    points: int

    def predict(self, devices: np.ndarray) -> np.ndarray:
        p = self.parallel_fraction
        if self.law == "Amdahl":
            return 1.0 / ((1.0 - p) + p / devices)
        return (1.0 - p) + p * devices


def fit_law(devices: np.ndarray, speedups: np.ndarray, scaling: str) -> tuple[str, float]:
    """Least-squares p of Amdahl's (strong) or Gustafson's (weak) law, clipped to [0, 1].
    Both are linear in p: Amdahl as 1/S - 1 = p (1/n - 1), Gustafson as S - 1 = p (n - 1)."""
    if scaling == "strong":
        x, y, law = 1.0 / devices - 1.0, 1.0 / speedups - 1.0, "Amdahl"
    else:
        x, y, law = devices - 1.0, speedups - 1.0, "Gustafson"
    denominator = float(np.dot(x, x))
    p = float(np.dot(x, y)) / denominator if denominator > 0 else 1.0
    return law, min(1.0, max(0.0, p))


def fit_scaling_laws(table: pd.DataFrame) -> List[ScalingFit]:
    """One fit per (study, device type, scaling) with at least two device counts."""
    fits = []
    valid = table.dropna(subset=["scaling_speedup"])
    for (study, device, scaling), group in valid.groupby(["study", "device", "scaling"], sort=True):
        by_devices = group.groupby("devices")["scaling_speedup"].max()
        if len(by_devices) < 2:
            continue
        law, p = fit_law(by_devices.index.to_numpy(dtype=float), by_devices.to_numpy(dtype=float), scaling)
        fits.append(ScalingFit(study, device, scaling, law, p, len(by_devices)))
    return fits
