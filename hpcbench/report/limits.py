"""The network-bound limit of data-parallel speedup, predicted from measurements (not fitted).

Every step all-reduces the model's gradients. With the bus bandwidth the run's probe measured on
its own interconnect (busbw, nccl-tests' definition), that takes
    t_comm(n) = gradient bytes x 2(n-1)/n / busbw.
With t1 the single device's time per step (data + compute + optimizer; nothing to communicate):
    weak scaling (per-device batch fixed; speedup on throughput): the step's compute stays t1,
        no overlap:      S(n) <= n t1 / (t1 + t_comm(n))
        perfect overlap: S(n) <= n t1 / max(t1, t_comm(n))
    strong scaling (global batch fixed; speedup on time): the compute shrinks to t1 / n,
        no overlap:      S(n) <= t1 / (t1 / n + t_comm(n))
        perfect overlap: S(n) <= t1 / max(t1 / n, t_comm(n))
busbw is taken as the best any multi-device configuration of the series measured (a ring's bus
bandwidth hardly depends on n); beyond the measured device counts the limit is an extrapolation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np
import pandas as pd

from hpcbench.report.scaling import single_device_of_type

COMPUTE_PHASES = ("data_step_s", "compute_step_s", "optimizer_step_s")


@dataclass
class NetworkLimit:
    study: str
    device: str
    scaling: str
    step_s: float  # t1: the single device's time per step
    grad_bytes: float
    busbw_gbps: float

    def comm_s(self, devices: np.ndarray) -> np.ndarray:
        n = np.asarray(devices, dtype=float)
        return self.grad_bytes * 2 * (n - 1) / n / (self.busbw_gbps * 1e9)

    def speedup(self, devices: np.ndarray, overlap: bool) -> np.ndarray:
        n = np.asarray(devices, dtype=float)
        compute = self.step_s if self.scaling == "weak" else self.step_s / n
        step = np.maximum(compute, self.comm_s(n)) if overlap else compute + self.comm_s(n)
        return n * self.step_s / step if self.scaling == "weak" else self.step_s / step


def network_limits(table: pd.DataFrame) -> List[NetworkLimit]:
    """One limit per (study, device type, scaling) that has a measured single-device step and a
    multi-device configuration with a probed bus bandwidth."""
    limits = []
    for (study, device, scaling), group in table.groupby(["study", "device", "scaling"], sort=True):
        parallel = group[(group["devices"] > 1) & (group["busbw_gbps"] > 0) & group["grad_bytes"].notna()]
        if parallel.empty:
            continue
        reference = single_device_of_type(table[table["study"] == study], parallel.iloc[0])
        if reference is None or reference[list(COMPUTE_PHASES)].isna().any():
            continue
        step = float(sum(reference[column] for column in COMPUTE_PHASES))
        limits.append(NetworkLimit(study, device, scaling, step, float(parallel["grad_bytes"].max()),
                                   float(parallel["busbw_gbps"].max())))
    return limits
