"""Finding run directories and reading them into one DataFrame; broken runs are kept aside with
the reason, never crash the report."""
from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pandas as pd
import yaml

from hpcbench.errors import HpcbenchError
from hpcbench.report.row import NUMERIC, PHASE_KEYS, run_row
from hpcbench.rundir import ENV, METRICS, RESOLVED_CONFIG, SUMMARY

# libyaml's safe loader parses a run's config ~20x faster than PyYAML's pure-Python one: with
# 1,000 runs, parsing was most of a report's time.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
PARALLEL_FROM_RUNS = 200  # fewer run directories are read sooner in this process than a pool of readers starts
MAX_READERS = 8

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


def read_json_file(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as error:
        raise ValueError(f"{path.name} is unreadable or not valid JSON ({error})") from None


def read_metrics_file(path: Path) -> List[dict]:
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            records.append(json.loads(line))
        except ValueError:
            raise ValueError(f"{path.name} line {number} is truncated or corrupt") from None
    return records


def read_run_config(run_dir: Path) -> dict:
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


def _read_run(run_dir: Path, name: str):
    """(row, metrics, env) of a completed run; raises a Problem for anything else."""
    try:
        summary = read_json_file(run_dir / SUMMARY)
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
        config = read_run_config(run_dir)
        metrics = read_metrics_file(run_dir / METRICS)
        env = read_json_file(run_dir / ENV) if (run_dir / ENV).is_file() else {}
        if len(metrics) != summary.get("epochs"):
            return Problem(name, "corrupt", f"metrics.jsonl has {len(metrics)} epochs, summary.json says {summary.get('epochs')}")
        return run_row(name, config, summary, metrics, env), metrics, env
    except FileNotFoundError as error:
        return Problem(name, "incomplete", f"missing {Path(error.filename).name if error.filename else error}")
    except (KeyError, TypeError, ValueError) as error:
        return Problem(name, "corrupt", f"unexpected content: {error}")


def _display_name(run_dir: Path, root: Path) -> str:
    relative = run_dir.relative_to(root)
    return str(Path(root.name) / relative) if str(relative) != "." else root.name


def _start_reading(found: List[Tuple[Path, str]]) -> Callable[[], List[Any]]:
    """Start _read_run of each (run directory, name); returns what waits for the results. A large
    study is read by a process a core, from now on: parsing a run's YAML config is most of the time,
    pure Python (1,000 runs: 2 s of one core), and the caller imports the report's libraries meanwhile."""
    workers = min(os.cpu_count() or 1, MAX_READERS)
    if len(found) < PARALLEL_FROM_RUNS or workers < 2:
        return lambda: [_read_run(run_dir, name) for run_dir, name in found]
    # fork: the readers start with this process's imports (a new interpreter would import pandas again)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    results = pool.map(_read_run, [run_dir for run_dir, _ in found], [name for _, name in found],
                       chunksize=max(1, len(found) // (4 * workers)))  # submitted now: the readers start

    def wait() -> List[Any]:
        with pool:
            return list(results)
    return wait


def start_collecting(paths: List[Path]) -> Callable[[], Collection]:
    """Start reading every run directory under `paths` (run or sweep directories); returns what
    waits for the Collection."""
    found = []
    for root in (Path(p) for p in paths):
        if not root.exists():
            raise ReportError(f"{root} does not exist")
        found += [(run_dir, _display_name(run_dir, root)) for run_dir in find_run_dirs(root)]
    reading = _start_reading(found)
    return lambda: _collection(found, reading(), paths)


def _collection(found: List[Tuple[Path, str]], results: List[Any], paths: List[Path]) -> Collection:
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
    return start_collecting(paths)()


def load_runs(*paths: str | Path) -> pd.DataFrame:
    """One row per completed run under `paths`."""
    return collect([Path(p) for p in paths]).runs
