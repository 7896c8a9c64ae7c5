"""A run directory's MLflow run, brought up to date with the directory by `RunSync.sync`.

What was logged already is remembered in the object, or, by a new process (a later upload), read
back from the server: the run is found by its tag `hpcbench.run_dir`, the epochs logged by the
steps of its `train_loss` history. Syncing again therefore adds only what is new, so the live
tracker and a later upload can share one run without duplicates.

- params: the resolved config, flattened (`mode.ranks`, `train.lr`, ...), once;
- tags: study and configuration ids (as the report groups runs), mode, ranks, nodes, hardware,
  git commit, Slurm job id, the run directory; `mlflow.parentRunId` for a job of a sweep;
- metrics: every numeric field of every epoch (losses, accuracies, img/s, lr, the step phases)
  at step = epoch; the summary's (probes: bus bandwidth, TFLOP/s, MFU; cost) when the run ends;
- artifacts and status when the run ends: its config, summary, metrics, environment and log.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from hpcbench.report.read import read_json_file, read_metrics_file, read_run_config
from hpcbench.report.row import lr_policy, workload_key
from hpcbench.rundir import ENV, METRICS, PROBE, RESOLVED_CONFIG, SUMMARY
from hpcbench.tracking.client_env import fail_fast_environment

TAG_RUN_DIR = "hpcbench.run_dir"
TAG_SWEEP_DIR = "hpcbench.sweep_dir"
PARENT_TAG = "mlflow.parentRunId"
ARTIFACTS = (RESOLVED_CONFIG, SUMMARY, METRICS, ENV, PROBE, "train.log")
MLFLOW_STATUS = {"completed": "FINISHED", "failed": "FAILED", "diverged": "FAILED", "interrupted": "KILLED"}
BATCH = 100  # MLflow takes at most 100 params (and 1000 metrics) per log_batch


def connect(uri: str):
    """An MlflowClient for `uri` (imported here: mlflow is an extra, and slow to import)."""
    fail_fast_environment()  # a no-op in the live tracker's thread, whose constructor set them
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(client, name: str) -> str:
    """The experiment's id, created on first use (an embedded sqlite store keeps its artifacts
    beside its database rather than in the working directory)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    uri = client.tracking_uri
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlflow-artifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # another job created it meanwhile
        return client.get_experiment_by_name(name).experiment_id


def find_run(client, experiment: str, tag: str, value: str) -> Optional[str]:
    quoted = value.replace("'", "\\'")
    runs = client.search_runs([experiment], filter_string=f"tags.`{tag}` = '{quoted}'", max_results=1)
    return runs[0].info.run_id if runs else None


def sweep_parent(client, experiment: str, sweep_dir: Path) -> str:
    """The parent run of a sweep directory, created on first use."""
    sweep_dir = Path(sweep_dir).resolve()
    found = find_run(client, experiment, TAG_SWEEP_DIR, str(sweep_dir))
    if found is not None:
        return found
    return client.create_run(experiment, run_name=sweep_dir.name, tags={TAG_SWEEP_DIR: str(sweep_dir)}).info.run_id


def sweep_status(run_statuses: List[str]) -> Optional[str]:
    """A sweep's parent run once every run has ended (their summary.json statuses): FINISHED when all
    completed, else FAILED; None while one runs or has not started."""
    if not run_statuses or any(status not in MLFLOW_STATUS for status in run_statuses):
        return None
    return "FINISHED" if all(status == "completed" for status in run_statuses) else "FAILED"


def flatten(config: Dict[str, Any], prefix: str = "") -> Dict[str, str]:
    flat: Dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)[:6000]  # MLflow's limit on a param's value
    return flat


def short_id(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def run_tags(run_dir: Path, config: Dict[str, Any], env: Dict[str, Any]) -> Dict[str, str]:
    mode, hardware = config.get("mode", {}), config.get("hardware", {})
    study = workload_key(config)
    configuration = json.dumps([study, mode, hardware.get("name"), config.get("batch_size"), lr_policy(config)],
                               sort_keys=True, default=str)
    tags = {TAG_RUN_DIR: str(run_dir), "hpcbench.study": short_id(study), "hpcbench.configuration": short_id(configuration),
            "hpcbench.experiment": str(config.get("experiment_name", "")), "mode": str(mode.get("name", "")),
            "ranks": str(mode.get("ranks", 1)), "nodes": str(mode.get("nodes", 1)), "hardware": str(hardware.get("name", "")),
            "git_commit": str((env.get("git") or {}).get("commit") or ""),
            "slurm_job_id": str((env.get("slurm") or {}).get("SLURM_JOB_ID", ""))}
    return {key: value for key, value in tags.items() if value}


def numeric(record: Dict[str, Any]) -> Dict[str, float]:
    return {key: float(value) for key, value in record.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def run_name(config: Dict[str, Any]) -> str:
    """What distinguishes a job of a sweep, in a few words: ddp x2 ci_cluster mobilenet_v2 b32 seed42."""
    mode, train = config.get("mode", {}), config.get("train", {})
    return (f"{mode.get('name', '?')} x{mode.get('ranks', 1)} {config.get('hardware', {}).get('name', '')} "
            f"{config.get('model', {}).get('name', '')} b{config.get('batch_size', {}).get('size', '?')} "
            f"seed{train.get('seed', '?')}")


class RunSync:
    """One run directory and its MLflow run (a child of `parent_id` when it is a sweep's job)."""

    def __init__(self, client, experiment: str, run_dir: Path, parent_id: Optional[str] = None):
        self.client, self.experiment, self.parent_id = client, experiment, parent_id
        self.run_dir = Path(run_dir).resolve()
        self.run_id: Optional[str] = None
        self.epochs_logged = 0
        self.ended = False

    def sync(self) -> None:
        """Log what the run directory holds and MLflow does not yet."""
        summary = read_json_file(self.run_dir / SUMMARY)
        if self.run_id is None:
            self._attach(summary)
        if self.ended:
            return
        metrics = read_metrics_file(self.run_dir / METRICS) if (self.run_dir / METRICS).is_file() else []
        self._log_epochs(metrics[self.epochs_logged:])
        status = summary.get("status", "running")
        if status in MLFLOW_STATUS:
            self._end(summary, status)

    def _attach(self, summary: Dict[str, Any]) -> None:
        """Find this directory's run (a resumed run, a later upload) or create it."""
        from mlflow.entities import Param

        found = find_run(self.client, self.experiment, TAG_RUN_DIR, str(self.run_dir))
        if found is not None:
            self.run_id = found
            history = self.client.get_metric_history(found, "train_loss")
            self.epochs_logged = max((int(m.step) for m in history), default=0)
            logged_status = self.client.get_run(found).info.status
            if logged_status == MLFLOW_STATUS.get(summary.get("status", "")) and self.epochs_logged >= (summary.get("epochs") or 0):
                self.ended = True  # MLflow holds all of it already
            elif logged_status != "RUNNING":
                self.client.update_run(found, status="RUNNING")  # resumed after an interruption
            return
        config = read_run_config(self.run_dir)
        env = read_json_file(self.run_dir / ENV) if (self.run_dir / ENV).is_file() else {}
        tags = run_tags(self.run_dir, config, env)
        if self.parent_id:
            tags[PARENT_TAG] = self.parent_id
        self.run_id = self.client.create_run(self.experiment, run_name=run_name(config), tags=tags).info.run_id
        params = [Param(key, value) for key, value in sorted(flatten(config).items())]
        for start in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + BATCH])

    def _log_epochs(self, epochs: List[Dict[str, Any]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for record in epochs:
            step = int(record["epoch"])
            values = [Metric(key, value, now, step) for key, value in numeric(record).items() if key != "epoch"]
            self.client.log_batch(self.run_id, metrics=values)
            self.epochs_logged = step

    def _end(self, summary: Dict[str, Any], status: str) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(summary.get("epochs") or 0)
        values = [Metric(f"run.{key}", value, now, step) for key, value in numeric(summary).items()]
        for start in range(0, len(values), 1000):
            self.client.log_batch(self.run_id, metrics=values[start:start + 1000])
        for name in ARTIFACTS:
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        self.client.set_terminated(self.run_id, MLFLOW_STATUS[status])
        self.ended = True
