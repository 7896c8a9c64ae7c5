"""The environment MLflow's client reads, set once, from the main thread."""
from __future__ import annotations

import os

# MLflow's client retries a request 7 times over minutes by default: a tracker that is down must
# cost a run seconds, not minutes (the live tracker retries on its own, then gives up).
FAST_FAILURE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def fail_fast_environment() -> None:
    """MLflow's client reads these from the environment (unless the user set them). Set from the
    main thread before the tracker's thread starts: setenv is not thread-safe, and the main thread
    meanwhile starts CUDA and DataLoader workers, which read the environment."""
    for name, value in FAST_FAILURE.items():
        os.environ.setdefault(name, value)
