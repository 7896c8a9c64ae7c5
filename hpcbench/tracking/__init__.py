"""Tracking: a copy of every run directory in MLflow, where a team already looks.

The run directory stays the record. `mlflow_run.RunSync` brings a run directory's MLflow run up to
date with it (params, tags, the metrics of every epoch not yet logged, the summary and files), the
same way during training (`live.LiveTracker`, rank 0, in a background thread) and afterwards
(`hpcbench-report ... --mlflow URI`, for runs logged offline or while the tracker was down).
A sweep is a parent run (`sweep.MlflowSweepCallback`), its jobs child runs.
"""
