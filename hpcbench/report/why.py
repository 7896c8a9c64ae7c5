"""The report's answer to "why": where each configuration's step time goes, how far it is from
the ceilings its probes measured, what it cost, and, for multi-node runs, each node's share.

Definitions (report.md quotes them):
- A training step is split, per rank, into data wait, forward+backward compute, exposed
  communication (the all-reduce time the backward pass could not hide) and the optimizer; the
  columns are the mean over ranks and steady epochs (the first epoch is left out when there are
  more), in milliseconds per step. Evaluation is per epoch.
- Exposed comm share = exposed communication / training time; overlap = the share of all-reduce
  time hidden behind compute. Straggler ratio = the slowest rank's compute / the median rank's
  (1.00: no straggler).
- MFU = achieved FLOP/s per device / the device's measured peak (a matrix product in the run's
  precision, probed at start); achieved = FLOPs per training image (3 x the forward pass) x
  images/s / devices. MFU (nominal) uses the hardware profile's stated peak instead.
- Bus bandwidth: the probe's best all-reduce busbw = algbw x 2(n-1)/n (nccl-tests' definition).
- Device-hours: GPUs x hours (GPU runs), cores x hours (CPU runs). Energy from NVML or RAPL
  counters where the machine exposes them; otherwise "n/a" and the reason, never an estimate.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np
import pandas as pd

from hpcbench.report.collect import Collection
from hpcbench.report.format import execution_mode, md_table, number
from hpcbench.report.limits import NetworkLimit
from hpcbench.report.row import rank_means

PHASE_COLUMNS = ["data_step_s", "compute_step_s", "comm_exposed_step_s", "optimizer_step_s"]


def _ms(value) -> str:
    return number(value * 1000 if value is not None else None, 1)


def _percent(value) -> str:
    return number(value * 100 if value is not None else None, 1, "%")


def _energy(row: pd.Series) -> str:
    if row["energy_j"] is None or np.isnan(row["energy_j"]):
        source = row.get("energy_source") or "not recorded"
        return f"n/a ({source.removeprefix('unavailable: ')})"
    return f"{row['energy_j'] / 1000:.1f} kJ ({row['energy_source']})"


def _largest_cost(row: pd.Series) -> str:
    """What, besides compute, took the largest share of the step: the first place to look."""
    step = sum(row[c] for c in PHASE_COLUMNS if not np.isnan(row[c]))
    if step <= 0:
        return "n/a"
    names = {"data_step_s": "data wait", "comm_exposed_step_s": "exposed communication", "optimizer_step_s": "optimizer"}
    column = max(names, key=lambda c: 0.0 if np.isnan(row[c]) else row[c])
    text = f"{names[column]} {row[column] / step * 100:.0f}% of the step"
    ratio = row["straggler_ratio"]
    if ratio is not None and not np.isnan(ratio) and ratio > 1.1:
        text += f"; a straggler computes {ratio:.2f}x the median"
    return text


def time_table(table: pd.DataFrame, names: Dict[str, str]) -> List[str]:
    lines = ["## Why: where a step's time goes", "",
             "Per training step, mean over ranks (ms); evaluation per epoch (s). Definitions below.", ""]
    rows = []
    for _, r in table.iterrows():
        measured = [r[c] for c in PHASE_COLUMNS if not np.isnan(r[c])]
        step = sum(measured) if measured else None
        rows.append([names[r["study"]], execution_mode(r), str(r["batch_per_device"]), _ms(step),
                     *[_ms(r[c]) for c in PHASE_COLUMNS], number(r["eval_time_s"], 2),
                     _percent(r["comm_exposed_share"]), _percent(r["comm_overlap_share"]),
                     number(r["straggler_ratio"], 2), _largest_cost(r)])
    return lines + md_table(["Study", "Mode", "Batch/device", "Step (ms)", "Data", "Compute", "Exposed comm",
                             "Optimizer", "Eval/epoch (s)", "Exposed comm share", "Overlap", "Straggler ratio",
                             "Largest cost beyond compute"], rows) + [""]


def ceilings_table(table: pd.DataFrame, names: Dict[str, str]) -> List[str]:
    lines = ["## Against the ceilings: efficiency and cost", ""]
    rows = [[names[r["study"]], execution_mode(r), number(r["flops_per_sample"] / 1e9 if r["flops_per_sample"] else None, 2),
             number(r["achieved_tflops"], 3), number(r["peak_tflops"], 2), _percent(r["mfu"]), _percent(r["mfu_nominal"]),
             number(r["busbw_gbps"], 2), _ms(r["allreduce_latency_s"]),
             f"{number(r['device_hours'], 3)} {r['device_hours_unit']}".strip(), _energy(r)]
            for _, r in table.iterrows()]
    return lines + md_table(["Study", "Mode", "GFLOP/image (train)", "Achieved TFLOP/s/device", "Measured peak TFLOP/s",
                             "MFU", "MFU (nominal)", "Bus bw (GB/s)", "All-reduce latency (ms)", "Device-hours",
                             "Energy"], rows) + [""]


def limits_table(table: pd.DataFrame, limits: List[NetworkLimit], names: Dict[str, str]) -> List[str]:
    lines = ["## Against the network: measured speedup and the network-bound limit", ""]
    if not limits:
        return lines + ["No series has both a single-device run and a multi-device run with a probed interconnect.", ""]
    rows = []
    for limit in limits:
        series = table[(table["study"] == limit.study) & (table["device"] == limit.device)
                       & (table["scaling"] == limit.scaling) & (table["devices"] > 1)]
        for _, r in series.iterrows():
            n = np.array([r["devices"]])
            rows.append([names[limit.study], execution_mode(r), limit.scaling, number(r["scaling_speedup"], 2, "x"),
                         number(float(limit.speedup(n, overlap=False)[0]), 2, "x"),
                         number(float(limit.speedup(n, overlap=True)[0]), 2, "x"),
                         _ms(float(limit.comm_s(n)[0])), _ms(r["comm_exposed_step_s"]), _ms(r["comm_total_step_s"])])
    return lines + md_table(["Study", "Mode", "Scaling", "Measured", "Limit, no overlap", "Limit, perfect overlap",
                             "Predicted all-reduce/step (ms)", "Exposed comm/step (ms)", "All-reduce in flight/step (ms)"],
                            rows) + [""]


def node_table(collection: Collection) -> List[str]:
    """Per host of every multi-node run: its ranks and their mean phases."""
    rows = []
    for run in collection.runs[collection.runs["nodes"] > 1].itertuples():
        hosts = collection.environments.get(run.run_dir, {}).get("rank_hosts") or []
        means = rank_means(collection.metrics[run.run_dir])
        if not means or len(hosts) != len(means["compute"]):
            continue
        for host in sorted(set(hosts)):
            ranks = [i for i, h in enumerate(hosts) if h == host]
            rows.append([Path(run.run_dir).name, host, ",".join(map(str, ranks)),
                         *[_ms(float(np.mean([means[p][i] for i in ranks]))) for p in ("data", "compute", "comm_exposed")]])
    if not rows:
        return []
    return ["## Per node", "", "Mean per step over the node's ranks (ms).", ""] + md_table(
        ["Run", "Host", "Ranks", "Data", "Compute", "Exposed comm"], rows) + [""]
