"""`hpcbench-report ... --mlflow URI`: the report's run directories and the report itself into
MLflow. Every run directory is synced (mlflow_run.RunSync: what a live tracker logged stays, what
it missed, offline or while the tracker was down, is added); a sweep's runs are children of the
sweep's parent run, which also gets the report's files (report.md, the plots, scaling.csv), and
whose status then follows its runs: FINISHED or FAILED once every one has ended."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from hpcbench.errors import HpcbenchError
from hpcbench.report.read import find_run_dirs, read_run_config
from hpcbench.rundir import read_summary
from hpcbench.tracking.live import first_line
from hpcbench.tracking.mlflow_run import RunSync, connect, experiment_id, find_run, sweep_parent, sweep_status

TAG_REPORT_DIR = "hpcbench.report_dir"


class TrackingError(HpcbenchError):
    """The tracker could not be reached or refused what was sent."""


def _experiment_name(run_dirs: List[Path]) -> str:
    for run_dir in run_dirs:
        try:
            config = read_run_config(run_dir)
        except (OSError, ValueError):
            continue
        return (config.get("tracking") or {}).get("experiment") or config.get("experiment_name") or "default"
    return "default"


def upload(paths: List[Path], report_dir: Path, uri: str, experiment: Optional[str] = None) -> str:
    """Sync every run under `paths` and log the report; returns what was done, in one line."""
    try:
        return _upload(paths, report_dir, uri, experiment)
    except HpcbenchError:
        raise
    except Exception as error:
        raise TrackingError(f"MLflow at {uri}: {first_line(error)} (the report in {report_dir} is written)") from None


def _upload(paths: List[Path], report_dir: Path, uri: str, experiment: Optional[str]) -> str:
    client = connect(uri)
    all_runs = [run_dir for path in paths for run_dir in find_run_dirs(path)]
    name = experiment or _experiment_name(all_runs)
    experiment_key = experiment_id(client, name)
    parents, synced = [], 0
    for path in paths:
        run_dirs = find_run_dirs(path)
        parent = sweep_parent(client, experiment_key, path) if run_dirs and run_dirs != [path] else None
        if parent is not None:
            parents.append(parent)
        for run_dir in run_dirs:
            if (run_dir / "summary.json").is_file():
                RunSync(client, experiment_key, run_dir, parent).sync()
                synced += 1
        if parent is not None:  # the sweep's status follows its runs (wait=false, a failure)
            ended = sweep_status([read_summary(run_dir).get("status", "running") for run_dir in run_dirs])
            if ended is not None:
                client.set_terminated(parent, ended)
    if not parents:  # single runs only: the report gets a run of its own
        report = str(Path(report_dir).resolve())
        parents = [find_run(client, experiment_key, TAG_REPORT_DIR, report)
                   or client.create_run(experiment_key, run_name=f"report {Path(report).name}",
                                        tags={TAG_REPORT_DIR: report}).info.run_id]
    for parent in parents:
        client.log_artifacts(parent, str(report_dir), artifact_path="report")
    return f"MLflow at {uri}, experiment {name}: {synced} run(s) synced, the report logged to run {', '.join(parents)}"
