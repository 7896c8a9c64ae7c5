"""Fixtures shared by the tests (helpers they import live in helpers.py)."""
from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from helpers import CIFAR_TARBALL


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    """The real CIFAR-10 JPEG tree from ../shared/data, extracted once per test session."""
    if not CIFAR_TARBALL.is_file():
        pytest.skip(f"{CIFAR_TARBALL} is not here")
    target = tmp_path_factory.mktemp("cifar")
    with tarfile.open(CIFAR_TARBALL) as archive:
        archive.extractall(target, filter="data")
    return target / "cifar10"


def _cluster_is_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    result = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    return result.returncode == 0 and ("idle" in result.stdout or "mix" in result.stdout)


@pytest.fixture(scope="session")
def slurm_cluster():
    """The test cluster of tests/cluster/cluster.sh; a skip without one, a failure under CI."""
    if not _cluster_is_up():
        if os.environ.get("CI"):
            pytest.fail("no Slurm cluster is running: .ci/run must start it (tests/cluster/cluster.sh start)")
        pytest.skip("no Slurm cluster here; start one with: tests/cluster/cluster.sh start --hosts 2")
