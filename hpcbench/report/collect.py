"""All the runs read (read.py) as one DataFrame, broken runs kept aside with the reason."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pandas as pd

from hpcbench.report.read import Problem, ReportError, start_reading
from hpcbench.report.row import NUMERIC, PHASE_KEYS


@dataclass
class Collection:
    runs: pd.DataFrame  # one row per completed run
    metrics: Dict[str, List[dict]]  # run_dir -> per-epoch metrics
    problems: List[Problem] = field(default_factory=list)
    environments: Dict[str, dict] = field(default_factory=dict)


def collection(found: List[Tuple[Path, str]], results: List[Any], paths: List[Path]) -> Collection:
    """The Collection of what read.start_reading found under `paths` and each one's result."""
    rows, metrics, problems, environments = [], {}, [], {}
    for (_, name), result in zip(found, results, strict=True):
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
        numeric = [f"{phase}_step_s" for phase in PHASE_KEYS] + list(NUMERIC)
        runs[numeric] = runs[numeric].apply(pd.to_numeric, errors="coerce")  # None (not measured) -> NaN
    return Collection(runs, metrics, sorted(problems, key=lambda p: p.run_dir), environments)


def collect(paths: List[Path]) -> Collection:
    """Read every run directory under `paths` (run or sweep directories)."""
    found, reading = start_reading(paths)
    return collection(found, reading(), paths)


def load_runs(*paths: str | Path) -> pd.DataFrame:
    """One row per completed run under `paths`."""
    return collect([Path(p) for p in paths]).runs
