"""A run directory as one row of the report's tables: what it ran (its configuration and study)
and what it measured, summarised over its steady epochs (all but the first when there are more).
Imported runs (hpcbench-import) leave unknown values as None: they become NaN, never a guess.
"""
from __future__ import annotations

import json
import math
import statistics
from typing import Any, Dict, List, Optional, Tuple

# Per-step phases (metrics.jsonl keys) and the summary's explanations that the tables carry.
PHASE_KEYS = {"data": "data_time_s", "compute": "compute_time_s", "comm_exposed": "comm_exposed_s",
              "optimizer": "optimizer_time_s", "comm_total": "comm_total_s"}
EXPLAINED = ("comm_exposed_share", "comm_overlap_share", "straggler_ratio", "grad_bytes", "grad_buckets",
             "flops_per_sample", "peak_tflops", "nominal_peak_tflops", "achieved_tflops", "mfu", "mfu_nominal",
             "busbw_gbps", "allreduce_latency_s", "nominal_busbw_gbps", "device_hours", "energy_j")

# Config keys that do not change the workload: runs differing only in these belong to one study.
NOT_WORKLOAD = ("mode", "hardware", "batch_size", "paths", "tracking", "experiment_name")
# The large-batch rule is how a configuration scales its learning rate, not the workload: a study
# compares "2 ranks, linear rule" with "2 ranks, no rule".
POLICY_KEYS = (("train", "lr_scaling"), ("train", "warmup_epochs"), ("train", "base_batch"))
NOT_WORKLOAD_KEYS = (("train", "seed"), ("train", "resume"), ("train", "save_checkpoints"), ("train", "keep_checkpoints"),
                     ("train", "probe"), ("data", "num_workers"), ("data", "root"), ("data", "download"), *POLICY_KEYS)
NUMERIC = (*EXPLAINED, "samples_per_s", "test_images", "step_time_mean_s", "step_time_std_s", "timed_steps",
           "time_per_epoch_s", "eval_time_s", "final_test_acc", "peak_memory_mb")


def workload_key(config: dict) -> str:
    """What a study holds fixed: the config without parallelism, hardware, batch and seed."""
    workload = {k: v for k, v in config.items() if k not in NOT_WORKLOAD}
    workload = json.loads(json.dumps(workload))  # a deep copy
    for group, key in NOT_WORKLOAD_KEYS:
        workload.get(group, {}).pop(key, None)
    return json.dumps(workload, sort_keys=True)


def _steady(metrics: List[dict]) -> List[dict]:
    """The epochs after the first when there are more (the first carries one-off costs)."""
    return metrics[1:] if len(metrics) > 1 else metrics


def _number(value: Any) -> Optional[float]:
    return None if value is None else float(value)


def _mean(values: List[Optional[float]]) -> Optional[float]:
    known = [v for v in values if v is not None]
    return statistics.mean(known) if known else None


def _per_step(metrics: List[dict], key: str) -> Optional[float]:
    """Seconds per training step in phase `key`, over the steady epochs (None: not measured)."""
    return _mean([m[key] / m["steps"] for m in _steady(metrics) if m.get("steps") and key in m])


def pooled_step_moments(metrics: List[dict]) -> Tuple[Optional[float], Optional[float], int]:
    """(mean, standard deviation, count) of rank 0's timed steps over the steady epochs: the
    epochs' moments combined as one sample."""
    parts = [(m["timed_steps"], m["step_time_mean_s"], m["step_time_std_s"]) for m in _steady(metrics)
             if m.get("timed_steps")]
    n = sum(count for count, _, _ in parts)
    if n == 0:
        return None, None, 0
    mean = sum(count * avg for count, avg, _ in parts) / n
    squares = sum((count - 1) * std**2 + count * (avg - mean) ** 2 for count, avg, std in parts)
    return mean, math.sqrt(squares / (n - 1)) if n > 1 else 0.0, n


def rank_means(metrics: List[dict]) -> Dict[str, List[float]]:
    """phase -> every rank's mean seconds per step over the steady epochs ({} for serial runs)."""
    epochs = [m for m in _steady(metrics) if m.get("rank_times") and m.get("steps")]
    if not epochs:
        return {}
    return {phase: [statistics.mean(m["rank_times"][phase][r] / m["steps"] for m in epochs)
                    for r in range(len(epochs[0]["rank_times"][phase]))]
            for phase in epochs[0]["rank_times"]}


def lr_policy(config: dict) -> str:
    """How the configuration scales its learning rate: "" for none."""
    train = config.get("train", {})
    rule = train.get("lr_scaling") or "none"
    if rule == "none":
        return ""
    warmup = train.get("warmup_epochs") or 0
    return f"lr {rule}" + (f", {warmup} warm-up epochs" if warmup else "")


def run_row(name: str, config: dict, summary: dict, metrics: List[dict], env: dict) -> Dict[str, Any]:
    mode, hardware, batch = config.get("mode", {}), config.get("hardware", {}), config.get("batch_size", {})
    gpus = env.get("gpus") or []
    epoch_times = [m["epoch_time_s"] for m in _steady(metrics) if m.get("epoch_time_s") is not None]
    step_mean, step_std, timed_steps = pooled_step_moments(metrics)
    return {
        "run_dir": name,
        "study": workload_key(config),
        "experiment": config.get("experiment_name", ""),
        "mode": summary.get("mode", mode.get("name")),
        "device": summary.get("device", mode.get("device")),
        "hardware": hardware.get("name", ""),
        "world_size": int(summary.get("world_size", 1)),
        "nodes": int(summary.get("nodes", 1)),
        "ranks_per_node": int(summary.get("ranks_per_node", 1)),
        "scaling": summary.get("scaling", batch.get("scaling", "weak")),
        "batch_per_device": int(summary["batch_per_device"]),
        "global_batch": int(summary["global_batch"]),
        "lr_policy": lr_policy(config),
        "model": summary.get("model", ""),
        "dataset": summary.get("dataset", ""),
        "image_size": int(summary.get("image_size") or 0),
        "precision": summary.get("precision", ""),
        "seed": config.get("train", {}).get("seed"),
        "epochs": int(summary["epochs"]),
        "total_time_s": float(summary["total_time_s"]),
        "time_per_epoch_s": statistics.median(epoch_times) if epoch_times else None,
        "samples_per_s": _number(summary.get("samples_per_s")),
        "step_time_mean_s": step_mean,
        "step_time_std_s": step_std,
        "timed_steps": timed_steps,
        "steps_per_epoch": int(summary.get("steps_per_epoch") or 0),
        **{f"{phase}_step_s": _per_step(metrics, key) for phase, key in PHASE_KEYS.items()},
        "eval_time_s": _mean([m.get("eval_time_s") for m in metrics]),
        **{key: summary.get(key) for key in EXPLAINED},
        "device_hours_unit": summary.get("device_hours_unit", ""),
        "energy_source": summary.get("energy_source", ""),
        "best_test_acc": float(summary["best_test_acc"]),
        "best_epoch": summary.get("best_epoch"),
        "final_test_acc": _number(summary.get("final_test_acc")),
        "test_images": summary.get("test_images") or None,  # None: unknown (imported)
        "accuracy_scope": summary.get("accuracy_scope", "global"),  # "rank 0 shard": an imported MPI log's
        "imported_from": summary.get("imported_from", ""),
        "peak_memory_mb": _number(summary.get("peak_memory_mb")),
        "gpu_name": gpus[0] if gpus else "",
        "cpu_model": env.get("cpu_model", ""),
        "hostname": env.get("hostname", summary.get("hostname", "")),
        "started_at": summary.get("started_at", ""),
        "finished_at": summary.get("finished_at", ""),
    }
