"""How `make test` shares this machine's cores between test processes (pytest-xdist workers).

Each test file runs whole on one worker, so that a module's fixture (a training study, a sweep) is
built once. Every file that uses the Slurm test cluster runs on the same worker, one test after
another: those tests count the cluster's jobs, drain and kill its hosts and fill its cores, and
two of them at once disturb each other. The other worker meanwhile runs the rest.
"""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
from xdist.scheduler import LoadScopeScheduling

CLUSTER_GROUP = "the Slurm test cluster"
CLUSTER_FIXTURE = "slurm_cluster"


@functools.cache
def _file_uses_the_cluster(path: Path) -> bool:
    return CLUSTER_FIXTURE in path.read_text()


def scope_of(nodeid: str, rootdir: Path) -> str:
    """The unit of work a test belongs to: its file, or the cluster's group."""
    file = nodeid.split("::", 1)[0]
    return CLUSTER_GROUP if _file_uses_the_cluster(rootdir / file) else file


class ClusterTestsTogether(LoadScopeScheduling):
    """xdist's scheduling by file, with every file that uses the Slurm cluster in one unit."""

    def __init__(self, config: pytest.Config, log=None):
        super().__init__(config, log)
        config.option.loadscopereorder = False  # the collection's order: the cluster's group first (order_items)

    def _split_scope(self, nodeid: str) -> str:
        return scope_of(nodeid, self.config.rootpath)


def order_items(items: list[pytest.Item], rootdir: Path) -> None:
    """The cluster's group first: its tests run one after another (a third of the suite's time),
    and started last they would leave the other worker idle."""
    items.sort(key=lambda item: scope_of(item.nodeid, rootdir) != CLUSTER_GROUP)


def check_cluster_tests_are_grouped(items: list[pytest.Item], rootdir: Path) -> None:
    """A test that uses the cluster through another fixture, in a file that never names it, would
    run beside the cluster's group: refuse the session instead."""
    for item in items:
        if CLUSTER_FIXTURE in getattr(item, "fixturenames", ()) and scope_of(item.nodeid, rootdir) != CLUSTER_GROUP:
            raise pytest.UsageError(f"{item.nodeid} uses the Slurm test cluster but its file never names "
                                    f"{CLUSTER_FIXTURE}: name it there (tests/parallel.py groups the cluster's tests by it)")
