"""Intervals and verdicts per configuration: how sure each number is, whether its accuracy differs
from its baseline's, and how long it took to reach a target accuracy.

- Intervals (95%): with n >= 2 repeats, Student t over the runs (time, throughput; accuracy on the
  logit scale, so that its interval stays in [0, 1]: stats.accuracy_interval); a single run's
  throughput from its own step times, its accuracy by Wilson's interval on its test-set count; a
  single run's total time has none.
- Accuracy parity: a configuration is flagged only when its accuracy differs from its baseline's
  significantly (Holm-adjusted p < 0.05 over all the report's comparisons) *and* by more than the
  tolerance (`--tolerance`). Accuracies an imported MPI log reports are rank 0's shard only: they
  are shown, marked, and never tested.
- Time to accuracy (MLPerf's way of judging training): the first epoch whose test accuracy reaches
  the target (default: the baseline's best minus the tolerance; `--target`), and the wall time of
  the epochs up to it (training + evaluation). A configuration's figure is the mean over the runs
  that reached it, with how many did; "not reached" is an answer. The time-to-accuracy speedup is
  the baseline's time over the configuration's, beside the throughput speedup.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from hpcbench.report import stats

GLOBAL = "global"


def _interval_columns(row: pd.Series) -> Dict[str, float]:
    columns: Dict[str, float] = {}
    for column, runs in (("total_time_s", "time_runs"), ("samples_per_s", "rate_runs"), ("best_test_acc", "acc_runs")):
        if column == "best_test_acc":
            interval = stats.accuracy_interval(row[runs], row["test_images_runs"] if _counts_known(row)
                                               else [None] * len(row[runs]))
        else:
            interval = stats.t_interval(row[runs])
        if interval is None and column == "samples_per_s" and row["timed_steps"] and row["timed_steps"] > 1:
            interval = stats.throughput_interval(row[column], row["step_time_mean_s"], row["step_time_std_s"],
                                                 int(row["timed_steps"]))
        if interval is None and column == "best_test_acc" and _counts_known(row):
            total = int(row["test_images_runs"][0])
            interval = stats.proportion_interval(round(row[column] * total), total)
        columns[f"{column}_low"] = interval.low if interval else math.nan
        columns[f"{column}_high"] = interval.high if interval else math.nan
    return columns


def _counts_known(row: pd.Series) -> bool:
    return row["accuracy_scope"] == GLOBAL and all(t and not math.isnan(t) for t in row["test_images_runs"])


def add_intervals(table: pd.DataFrame) -> pd.DataFrame:
    intervals = pd.DataFrame([_interval_columns(row) for _, row in table.iterrows()], index=table.index)
    return pd.concat([table, intervals], axis=1)


def add_parity(table: pd.DataFrame, tolerance: float) -> pd.DataFrame:
    """acc_diff (+ 95% interval), acc_p (raw), acc_p_holm, acc_test and acc_flag vs each baseline."""
    table = table.copy()
    results: List[Optional[stats.Difference]] = []
    for _, row in table.iterrows():
        base = table.loc[row["baseline_row"]] if row["baseline_row"] >= 0 else None
        if base is None or base.name == row.name or not (_counts_known(row) and _counts_known(base)):
            results.append(None)
            continue
        results.append(stats.accuracy_difference(row["acc_runs"], row["test_images_runs"], base["acc_runs"],
                                                 base["test_images_runs"]))
    table["acc_diff"] = [r.value if r else math.nan for r in results]
    table["acc_diff_low"] = [r.low if r else math.nan for r in results]
    table["acc_diff_high"] = [r.high if r else math.nan for r in results]
    table["acc_p"] = [r.p if r else math.nan for r in results]
    table["acc_test"] = [r.test if r else "" for r in results]
    table["acc_p_holm"] = stats.holm(list(table["acc_p"]))
    table["acc_flag"] = [bool(p < stats.ALPHA and abs(d) > tolerance + 1e-12)
                         for p, d in zip(table["acc_p_holm"], table["acc_diff"], strict=True)]
    return table


def first_reaching(metrics: List[dict], target: float) -> Optional[tuple]:
    """(epoch, wall seconds up to and including it) of the first epoch at or above `target`."""
    elapsed = 0.0
    for epoch in metrics:
        elapsed += epoch.get("epoch_time_s") or math.nan
        if epoch.get("test_acc") is not None and epoch["test_acc"] >= target:
            return epoch["epoch"], elapsed
    return None


def add_time_to_accuracy(table: pd.DataFrame, metrics: Dict[str, List[dict]], tolerance: float,
                         target: Optional[float] = None) -> pd.DataFrame:
    """tta_target, tta_epochs, tta_time_s (means over the runs that reached it), tta_reached
    ("k/n"), tta_speedup (baseline's time / this one's)."""
    table = table.copy()
    targets, epochs, times, reached = [], [], [], []
    for _, row in table.iterrows():
        base = table.loc[row["baseline_row"]] if row["baseline_row"] >= 0 else None
        goal = target if target is not None else (base["best_test_acc"] - tolerance if base is not None else math.nan)
        if row["accuracy_scope"] != GLOBAL or (base is not None and base["accuracy_scope"] != GLOBAL):
            goal = math.nan  # a shard's accuracy says nothing about reaching a global target
        hits = [first_reaching(metrics[run], goal) for run in row["run_list"]] if not math.isnan(goal) else []
        hits = [h for h in hits if h is not None]
        targets.append(goal)
        epochs.append(float(np.mean([h[0] for h in hits])) if hits else math.nan)
        times.append(float(np.mean([h[1] for h in hits])) if hits else math.nan)
        reached.append(f"{len(hits)}/{len(row['run_list'])}" if not math.isnan(goal) else "n/a")
    table["tta_target"], table["tta_epochs"], table["tta_time_s"], table["tta_reached"] = targets, epochs, times, reached
    table["tta_speedup"] = [table.loc[b, "tta_time_s"] / t if b >= 0 and t > 0 else math.nan
                            for b, t in zip(table["baseline_row"], table["tta_time_s"], strict=True)]
    return table
