"""What the tests share: composing configs like Hydra does, running the real CLI, reading run
directories. Fixtures live in conftest.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from hpcbench.config import RunConfig, register_schemas, to_run_config
from hpcbench.resolvers import register_resolvers
from hpcbench.train import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]
CIFAR_TARBALL = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
PRIMARY_CONFIG = "hpcbench"

# Small enough for a 2-core machine: 32 px, a few hundred images, 2 epochs, no worker processes.
TINY = [
    "data.image_size=32",
    "data.limit_train=128",
    "data.limit_test=64",
    "data.num_workers=0",
    "train.epochs=2",
    "batch_size=per_device_32",
]

register_resolvers()
register_schemas()


def compose_config(overrides: list[str]) -> DictConfig:
    """The config Hydra would compose for `hpcbench-train OVERRIDES`."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=PRIMARY_CONFIG, overrides=overrides)


def compose_run(overrides: list[str]) -> RunConfig:
    return to_run_config(compose_config(overrides))


def cli_env(cwd: Path, extra: dict | None = None) -> dict:
    """The environment of a CLI run: outputs under cwd/outputs, one-line errors."""
    env = {**os.environ, "HPCBENCH_OUTPUT_DIR": str(cwd / "outputs"), **(extra or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_cli(args: list[str], cwd: Path, timeout: float = 300, env: dict | None = None,
            module: str = "hpcbench.train") -> subprocess.CompletedProcess:
    """Run `python -m hpcbench.train ARGS` in `cwd`, outputs under cwd/outputs."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=cli_env(cwd, env),
                          capture_output=True, text=True, timeout=timeout)


def run_dirs(root: Path) -> list[Path]:
    """Every run directory (one holding resolved_config.yaml) under root, sorted."""
    return sorted({p.parent for p in root.rglob("resolved_config.yaml")})


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
