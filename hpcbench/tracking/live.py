"""Rank 0 logs its run to the tracker while it trains, never waiting for it: a background thread
brings the run's MLflow run up to date with the run directory (mlflow_run.RunSync) whenever the
record changes. A tracker that cannot be reached is retried, then left alone for the rest of the
run, and the log says so once; the run directory still holds everything, for a later upload
(`hpcbench-report RUN_DIR --out DIR --mlflow URI`).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Optional

from hpcbench.config import RunConfig
from hpcbench.tracking.client_env import fail_fast_environment

log = logging.getLogger("hpcbench")

# The parent run of the sweep a job belongs to (set by sweep.MlflowSweepCallback in the process
# that starts the sweep; jobs inherit it, on Slurm through sbatch's exported environment).
PARENT_RUN_ENV = "HPCBENCH_MLFLOW_PARENT_RUN_ID"
RETRY_PAUSES_S = (1.0, 3.0)  # the pauses before the second and third attempt of a sync
CLOSE_WAIT_S = 60.0  # the most the end of a run waits for its last sync


def first_line(error: BaseException) -> str:
    """A tracker's error in a log line: MLflow's messages run to many lines (request, response)."""
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


class NoTracker:
    """tracking=none, tracking.offline=true, and ranks other than 0."""

    def changed(self) -> None:
        pass

    def close(self) -> None:
        pass


class LiveTracker:
    def __init__(self, uri: str, experiment: str, run_dir: Path, parent_id: Optional[str]):
        self.uri, self.experiment, self.run_dir, self.parent_id = uri, experiment, Path(run_dir), parent_id
        self._sync = None  # mlflow_run.RunSync, once connected
        self._wake, self._done = threading.Event(), threading.Event()
        self._closing = False
        # What tracking costs: syncs done and the CPU seconds of this thread, the first sync (which
        # imports mlflow and connects) apart
        self.syncs, self.cpu_s, self.first_cpu_s = 0, 0.0, 0.0
        fail_fast_environment()  # here, not in the thread's connect(): see fail_fast_environment
        self._thread = threading.Thread(target=self._work, name="hpcbench-mlflow", daemon=True)
        self._thread.start()

    def changed(self) -> None:
        """The run directory changed: sync it (soon, in the background)."""
        self._wake.set()

    def close(self) -> None:
        """The run has ended: one last sync, waited for at most CLOSE_WAIT_S."""
        self._closing = True
        self._wake.set()
        self._done.wait(CLOSE_WAIT_S)

    def _work(self) -> None:
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                closing = self._closing
                started = time.thread_time()
                synced = self._sync_with_retries()
                spent = time.thread_time() - started
                self.syncs, self.cpu_s = self.syncs + 1, self.cpu_s + spent
                if self.syncs == 1:
                    self.first_cpu_s = spent
                if not synced or closing:
                    return
        finally:
            if self.syncs:
                log.info("MLflow tracking: %d sync(s), %.2f s of CPU in the background (%.2f s the first: import, "
                         "connection)", self.syncs, self.cpu_s, self.first_cpu_s)
            self._done.set()

    def _sync_with_retries(self) -> bool:
        error: Optional[BaseException] = None
        for pause in (0.0, *RETRY_PAUSES_S):
            time.sleep(pause)
            try:
                if self._sync is None:
                    from hpcbench.tracking.mlflow_run import RunSync, connect, experiment_id

                    client = connect(self.uri)
                    self._sync = RunSync(client, experiment_id(client, self.experiment), self.run_dir, self.parent_id)
                self._sync.sync()
                return True
            except Exception as failure:  # whatever the tracker does, the run goes on
                error = failure
        assert error is not None
        log.warning("MLflow tracking at %s failed (%s); the run goes on without it. Upload it later with: "
                    "hpcbench-report %s --out REPORT_DIR --mlflow %s", self.uri, first_line(error), self.run_dir, self.uri)
        return False


def start_tracking(cfg: RunConfig, run_dir: Optional[Path]):
    """The tracker of a run's rank 0 (`run_dir` is None on the other ranks)."""
    tracking = cfg.tracking
    if run_dir is None or tracking.name == "none" or tracking.offline:
        return NoTracker()
    return LiveTracker(tracking.uri or "", tracking.experiment or cfg.experiment_name, run_dir,
                       os.environ.get(PARENT_RUN_ENV))
