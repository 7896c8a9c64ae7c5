"""Reading run directories, one at a time: finding them under the paths given, and each one's
summary, metrics, environment and config turned into a row of the report's tables (row.py), or a
Problem saying why it is left out (broken runs never crash the report). No pandas here: the report
starts its readers before it imports the libraries of its tables and plots (cli.py)."""
from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Tuple

import yaml

from hpcbench.errors import HpcbenchError
from hpcbench.report.row import run_row
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
    # fork: the readers start with this process's imports (a new interpreter would import them again)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    results = pool.map(_read_run, [run_dir for run_dir, _ in found], [name for _, name in found],
                       chunksize=max(1, len(found) // (4 * workers)))  # submitted now: the readers start

    def wait() -> List[Any]:
        with pool:
            return list(results)
    return wait


def start_reading(paths: List[Path]) -> Tuple[List[Tuple[Path, str]], Callable[[], List[Any]]]:
    """Start reading every run directory under `paths` (run or sweep directories): the (run
    directory, name) pairs found, and what waits for each one's (row, metrics, env) or Problem."""
    found = []
    for root in (Path(p) for p in paths):
        if not root.exists():
            raise ReportError(f"{root} does not exist")
        found += [(run_dir, _display_name(run_dir, root)) for run_dir in find_run_dirs(root)]
    return found, _start_reading(found)
