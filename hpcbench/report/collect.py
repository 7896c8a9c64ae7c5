"""Finding run directories and reading them into one DataFrame; broken runs are kept aside with
the reason, never crash the report."""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import pandas as pd
import yaml

from hpcbench.errors import HpcbenchError
from hpcbench.rundir import ENV, METRICS, RESOLVED_CONFIG, SUMMARY

# libyaml's safe loader parses a run's config ~20x faster than PyYAML's pure-Python one: with
# 1,000 runs, parsing was most of a report's time.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Config keys that do not change the workload: runs differing only in these belong to one study.
NOT_WORKLOAD = ("mode", "hardware", "batch_size", "paths", "experiment_name")
NOT_WORKLOAD_KEYS = (("train", "seed"), ("train", "resume"), ("train", "save_checkpoints"), ("data", "num_workers"),
                     ("data", "root"), ("data", "download"))


class ReportError(HpcbenchError):
    """Nothing to report on."""


@dataclass
class Problem:
    run_dir: str
    status: str  # failed | running | incomplete | corrupt
    reason: str


@dataclass
class Collection:
    runs: pd.DataFrame  # one row per completed run
    metrics: Dict[str, List[dict]]  # run_dir -> per-epoch metrics
    problems: List[Problem] = field(default_factory=list)
    environments: Dict[str, dict] = field(default_factory=dict)


def find_run_dirs(root: Path) -> List[Path]:
    """Directories that are runs: they hold Hydra's .hydra/ or a resolved_config.yaml."""
    if (root / ".hydra").is_dir() or (root / RESOLVED_CONFIG).is_file():
        return [root]
    found = {p.parent for p in root.rglob(RESOLVED_CONFIG)} | {p.parent for p in root.rglob(".hydra") if p.is_dir()}
    return sorted(found)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as error:
        raise ValueError(f"{path.name} is unreadable or not valid JSON ({error})") from None


def _read_metrics(path: Path) -> List[dict]:
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            records.append(json.loads(line))
        except ValueError:
            raise ValueError(f"{path.name} line {number} is truncated or corrupt") from None
    return records


def _read_config(run_dir: Path) -> dict:
    for path in (run_dir / RESOLVED_CONFIG, run_dir / ".hydra" / "config.yaml"):
        if path.is_file():
            try:
                config = yaml.load(path.read_text(), Loader=SAFE_LOADER)
            except yaml.YAMLError as error:
                raise ValueError(f"{path.name} is not valid YAML ({error})") from None
            if not isinstance(config, dict):
                raise ValueError(f"{path.name} does not hold a config")
            return config
    raise FileNotFoundError("no resolved_config.yaml or .hydra/config.yaml")


def workload_key(config: dict) -> str:
    """What a study holds fixed: the config without parallelism, hardware, batch and seed."""
    workload = {k: v for k, v in config.items() if k not in NOT_WORKLOAD}
    workload = json.loads(json.dumps(workload))  # a deep copy
    for group, key in NOT_WORKLOAD_KEYS:
        workload.get(group, {}).pop(key, None)
    return json.dumps(workload, sort_keys=True)


def _median_epoch_time(metrics: List[dict]) -> float:
    # The first epoch carries one-off costs (allocator, caches); leave it out when there are more.
    times = [m["epoch_time_s"] for m in metrics]
    return statistics.median(times[1:] if len(times) > 1 else times)


def _mean(metrics: List[dict], key: str) -> Optional[float]:
    values = [m[key] for m in metrics if key in m]
    return statistics.mean(values) if values else None


def _row(name: str, config: dict, summary: dict, metrics: List[dict], env: dict) -> Dict[str, Any]:
    mode, hardware, batch = config.get("mode", {}), config.get("hardware", {}), config.get("batch_size", {})
    gpus = env.get("gpus") or []
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
        "model": summary.get("model", ""),
        "dataset": summary.get("dataset", ""),
        "image_size": int(summary.get("image_size", 0)),
        "seed": config.get("train", {}).get("seed"),
        "epochs": int(summary["epochs"]),
        "total_time_s": float(summary["total_time_s"]),
        "time_per_epoch_s": _median_epoch_time(metrics),
        "samples_per_s": float(summary["samples_per_s"]),
        "data_time_s": _mean(metrics, "data_time_s"),
        "compute_time_s": _mean(metrics, "compute_time_s"),
        "eval_time_s": _mean(metrics, "eval_time_s"),
        "comm_time_s": _mean(metrics, "comm_time_s"),
        "best_test_acc": float(summary["best_test_acc"]),
        "best_epoch": int(summary["best_epoch"]),
        "final_test_acc": float(summary["final_test_acc"]),
        "peak_memory_mb": float(summary.get("peak_memory_mb", 0.0)),
        "gpu_name": gpus[0] if gpus else "",
        "cpu_model": env.get("cpu_model", ""),
        "hostname": env.get("hostname", summary.get("hostname", "")),
        "started_at": summary.get("started_at", ""),
        "finished_at": summary.get("finished_at", ""),
    }


def _read_run(run_dir: Path, name: str):
    """(row, metrics, env) of a completed run; raises a Problem for anything else."""
    try:
        summary = _read_json(run_dir / SUMMARY)
    except FileNotFoundError:
        return Problem(name, "incomplete", "no summary.json: not started, or stopped before training")
    except ValueError as error:
        return Problem(name, "corrupt", str(error))
    status = summary.get("status", "unknown")
    if status == "running":
        done = summary.get("epochs", 0)
        return Problem(name, "running", f"running (or stopped without a word): {done}/{summary.get('epochs_planned', '?')} epochs")
    if status != "completed":
        return Problem(name, status, summary.get("error") or f"status {status}")
    try:
        config = _read_config(run_dir)
        metrics = _read_metrics(run_dir / METRICS)
        env = _read_json(run_dir / ENV) if (run_dir / ENV).is_file() else {}
        if len(metrics) != summary.get("epochs"):
            return Problem(name, "corrupt", f"metrics.jsonl has {len(metrics)} epochs, summary.json says {summary.get('epochs')}")
        return _row(name, config, summary, metrics, env), metrics, env
    except FileNotFoundError as error:
        return Problem(name, "incomplete", f"missing {Path(error.filename).name if error.filename else error}")
    except (KeyError, TypeError, ValueError) as error:
        return Problem(name, "corrupt", f"unexpected content: {error}")


def _display_name(run_dir: Path, root: Path) -> str:
    relative = run_dir.relative_to(root)
    return str(Path(root.name) / relative) if str(relative) != "." else root.name


def collect(paths: List[Path]) -> Collection:
    """Read every run directory under `paths` (run or sweep directories)."""
    rows, metrics, problems, environments = [], {}, [], {}
    for root in (Path(p) for p in paths):
        if not root.exists():
            raise ReportError(f"{root} does not exist")
        run_dirs = find_run_dirs(root)
        for run_dir in run_dirs:
            name = _display_name(run_dir, root)
            result = _read_run(run_dir, name)
            if isinstance(result, Problem):
                problems.append(result)
                continue
            row, run_metrics, env = result
            rows.append(row)
            metrics[name], environments[name] = run_metrics, env
    if not rows and not problems:
        raise ReportError(f"no run directories under {', '.join(str(p) for p in paths)}")
    runs = pd.DataFrame(rows)
    if not runs.empty:
        runs = runs.sort_values("run_dir", kind="stable").reset_index(drop=True)
    return Collection(runs, metrics, sorted(problems, key=lambda p: p.run_dir), environments)


def load_runs(*paths: str | Path) -> pd.DataFrame:
    """One row per completed run under `paths`."""
    return collect([Path(p) for p in paths]).runs
