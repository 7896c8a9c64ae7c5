"""Fixtures shared by the tests (helpers they import live in helpers.py)."""
from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

# Before torch loads its OpenMP runtime (helpers and warm_cli import torch), and inherited by every
# process the tests start (CLIs, MPI ranks, Slurm jobs). The test hosts and a test's concurrent
# processes share this machine's 2 cores, and an OpenMP thread that waits spins by default: 4 ranks
# of 2 threads on 2 cores took 50 s for one DDP step, 22 s with waiting threads asleep; the suite
# about 3 minutes less. It changes no result: the order of every reduction is the same.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# In a parallel session (`make test`: one pytest-xdist worker a core, tests/parallel.py) every
# process a test starts runs one thread: two workers' OpenMP teams of 2 on 2 cores wait at every
# parallel region for a thread the other worker holds (the real-CIFAR test took 432 s, not 104 s).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import parallel  # noqa: E402
import warm_cli  # noqa: E402
from helpers import CIFAR_TARBALL  # noqa: E402

# The first images of each class that the tests read (data.limit_train / limit_test take the first
# N class-balanced): writing these 3,500 files instead of all 60,000 saves half a minute.
CIFAR_PER_CLASS = {"train": 250, "test": 100}


def _first_of_each_class(member: tarfile.TarInfo) -> bool:
    parts = member.name.split("/")  # cifar10/<split>/<class>/<NNNN>.jpg
    return not member.isfile() or (len(parts) == 4 and int(parts[3].split(".")[0]) < CIFAR_PER_CLASS[parts[1]])


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    """Real CIFAR-10 JPEGs from ../shared/data (the first images of each class), extracted once per
    test session."""
    if not CIFAR_TARBALL.is_file():
        pytest.skip(f"{CIFAR_TARBALL} is not here")
    target = tmp_path_factory.mktemp("cifar")
    with tarfile.open(CIFAR_TARBALL) as archive:
        archive.extractall(target, members=filter(_first_of_each_class, archive), filter="data")
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


OPEN_MPI_MPIRUN = "/usr/bin/mpirun.openmpi"  # Debian's openmpi-bin (the alternatives link mpirun to it)


@pytest.fixture(scope="session")
def open_mpi() -> dict:
    """The environment of an Open MPI run here (Debian's openmpi-bin, which .ci/run installs);
    a skip without it, a failure under CI. Open MPI refuses to start as root unless told, and CI
    runs as root; on a cluster users are not root."""
    if not Path(OPEN_MPI_MPIRUN).is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{OPEN_MPI_MPIRUN} is missing: .ci/run installs Debian's openmpi-bin")
        pytest.skip("Open MPI is not installed (apt-get install openmpi-bin)")
    return {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"} if os.geteuid() == 0 else {}


INTEL_MPI_PREFIX = Path("/opt/intel-mpi")  # PyPI's impi-rt, installed there by .ci/run


@pytest.fixture(scope="session")
def intel_mpi() -> dict:
    """The environment of an Intel MPI run here: its bin/ first on PATH, as a site's module puts
    it; a skip without it, a failure under CI."""
    if not (INTEL_MPI_PREFIX / "bin" / "mpiexec").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{INTEL_MPI_PREFIX}/bin/mpiexec is missing: .ci/run installs PyPI's impi-rt there")
        pytest.skip(f"Intel MPI is not installed (pip install --no-deps --prefix {INTEL_MPI_PREFIX} impi-rt)")
    return {"PATH": f"{INTEL_MPI_PREFIX / 'bin'}:{os.environ['PATH']}"}


@pytest.fixture(scope="session", autouse=True)
def warm_interpreter():
    """The fork server that helpers.run_cli's commands start from, started before any test can
    change the environment it imports torch in."""
    warm_cli.start_server()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    return parallel.ClusterTestsTogether(config, log)


def pytest_collection_modifyitems(config, items):
    parallel.check_cluster_tests_are_grouped(items, config.rootpath)
    parallel.order_items(items, config.rootpath)
