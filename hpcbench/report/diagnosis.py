"""One sentence per study: where the largest scaling loss goes, and how large it is.

The sentence is about the study's multi-device configuration with the most devices (the least
efficient among equals). Each phase's loss is its measured time per step minus what the
single-device configuration of the same device type predicts for it: data wait and compute in
proportion to the per-device batch (the same in weak scaling, 1/n of it in strong scaling), the
optimizer step unchanged, communication zero. The sentence names the phase with the largest loss
and its share of the step (then the next one, if any); when that phase is the exposed all-reduce
and the probe measured the link, also the network-bound limit the link sets. A configuration at
95% efficiency or more has nothing worth a sentence; a loss no phase of the step shows (start-up,
evaluation) is said to be outside the step.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from hpcbench.report.limits import NetworkLimit
from hpcbench.report.scaling import single_device_of_type

PHASES = {"data_step_s": "data wait", "compute_step_s": "compute", "comm_exposed_step_s": "exposed all-reduce",
          "optimizer_step_s": "the optimizer step"}
SCALES_WITH_BATCH = ("data_step_s", "compute_step_s")
NOTHING_TO_EXPLAIN = 0.95  # efficiency from which no loss is worth a sentence


def _expected(reference: pd.Series, row: pd.Series) -> Dict[str, float]:
    """Each phase's time per step if the configuration scaled perfectly from one device."""
    batch_ratio = row["batch_per_device"] / reference["batch_per_device"]
    return {column: 0.0 if column == "comm_exposed_step_s" else
            reference[column] * (batch_ratio if column in SCALES_WITH_BATCH else 1.0) for column in PHASES}


def _describe(column: str, row: pd.Series, expected: float, step: float) -> str:
    share = f"{(row[column] - expected) / step:.0%} of each step"
    if column == "comm_exposed_step_s":
        return f"exposed all-reduce is {row[column] / step:.0%} of each step ({row[column] * 1000:.0f} of {step * 1000:.0f} ms)"
    if column == "compute_step_s":
        per_node = f", {row['ranks_per_node']} ranks per node" if row["ranks_per_node"] > 1 else ""
        return (f"compute per step takes {row[column] / expected:.2f}x what one {row['device']} device needs for "
                f"a batch of {row['batch_per_device']} ({share}{per_node})")
    return f"{PHASES[column]} grows from {expected * 1000:.0f} to {row[column] * 1000:.0f} ms per step ({share})"


def _limit_clause(row: pd.Series, limit: Optional[NetworkLimit]) -> str:
    if limit is None:
        return ""
    devices = np.array([row["devices"]])
    overlap, serial = float(limit.speedup(devices, overlap=True)[0]), float(limit.speedup(devices, overlap=False)[0])
    return (f"; the measured link (busbw {limit.busbw_gbps:.2f} GB/s) bounds the speedup at {overlap:.2f}x even with "
            f"perfect overlap ({serial:.2f}x without; measured {row['scaling_speedup']:.2f}x)")


def study_sentence(study: pd.DataFrame, limits: List[NetworkLimit], name: str) -> Optional[str]:
    parallel = study[study["devices"] > 1].dropna(subset=["efficiency", *PHASES])
    if parallel.empty:
        return None
    row = parallel.sort_values(["devices", "efficiency"], ascending=[False, True], kind="stable").iloc[0]
    nodes = f"{row['nodes']} node{'s' if row['nodes'] > 1 else ''}"
    head = f"{name}: at {row['devices']} {row['device']} ranks on {nodes}, {row['scaling']} scaling efficiency is {row['efficiency']:.0%}"
    if row["efficiency"] >= NOTHING_TO_EXPLAIN:
        return head + ": no loss worth explaining."
    reference = single_device_of_type(study, row)
    if reference is None or reference[list(PHASES)].isna().any():
        return head + " (no single-device run of the same device type to compare its steps with)."
    expected = _expected(reference, row)
    step = float(sum(row[column] for column in PHASES))
    losses = sorted(((row[c] - expected[c], c) for c in PHASES), reverse=True)
    if losses[0][0] <= 0:
        return head + "; no phase of the training step grew, so the loss is outside it (start-up, evaluation)."
    largest = losses[0][1]
    text = head + "; " + _describe(largest, row, expected[largest], step)
    if largest == "comm_exposed_step_s":
        limit = next((candidate for candidate in limits if (candidate.study, candidate.device, candidate.scaling)
                      == (row["study"], row["device"], row["scaling"])), None)
        text += _limit_clause(row, limit)
    elif losses[1][0] > 0:
        text += "; then " + _describe(losses[1][1], row, expected[losses[1][1]], step)
    return text + "."


def sentences(table: pd.DataFrame, limits: List[NetworkLimit], names: Dict[str, str]) -> List[str]:
    found = [sentence for study in names if (sentence := study_sentence(table[table["study"] == study], limits,
                                                                          names[study])) is not None]
    if not found:
        return []
    return ["## In one sentence", ""] + [f"- {sentence}" for sentence in found] + [""]
