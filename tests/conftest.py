"""Fixtures shared by the tests (helpers they import live in helpers.py)."""
from __future__ import annotations

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
