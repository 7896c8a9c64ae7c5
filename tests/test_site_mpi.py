"""The site's MPI, other than the MPICH wheel hpcbench installs: Open MPI (Debian's 4.1, the original
study's was 4.1.1) and Intel MPI (PyPI's impi-rt 2021) started by hpcbench and by the user's own
mpirun / mpiexec, one mpi4py for all (its wheel carries both ABIs; Intel's library is found by
path), the profile's hardware.mpi checked against what the ranks run. Across the test cluster's
hosts: tests/test_multinode.py."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import INTEL_MPI_PREFIX, OPEN_MPI_MPIRUN
from helpers import TINY, cli_env, read_json, run_cli, run_dirs, start_and_wait_for_an_epoch

from hpcbench.errors import ConfigError
from hpcbench.mpi.launch import find_launcher

DDP = [*TINY, "mode=ddp", "mode.ranks=2", "mode.device=cpu"]
OPEN_MPI = ["hardware.mpi=openmpi", "hardware.mpi_launcher=mpirun"]


def test_hpcbench_starts_open_mpi_ranks_with_open_mpis_mpirun(tmp_path, open_mpi):
    result = run_cli([*DDP, *OPEN_MPI], tmp_path, env=open_mpi)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"starting 2 MPI ranks: {OPEN_MPI_MPIRUN.removesuffix('.openmpi')} -n 2 " in result.stderr
    [run_dir] = run_dirs(tmp_path / "outputs")
    summary, env = read_json(run_dir / "summary.json"), read_json(run_dir / "env.json")
    assert (summary["status"], summary["world_size"]) == ("completed", 2)
    assert env["mpi"].startswith("Open MPI v4.")  # the ranks loaded Open MPI's libmpi, not the venv's MPICH


def test_the_users_mpirun_runs_hpcbench_train_as_its_ranks_and_a_wrong_profile_is_one_line(tmp_path, open_mpi):
    """The original study's way: `mpirun -np 2 python train.py` (here, inside no allocation)."""
    def mpirun(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([OPEN_MPI_MPIRUN, "-n", "2", sys.executable, "-m", "hpcbench.train", *DDP, *args],
                              cwd=tmp_path, env=cli_env(tmp_path, open_mpi), capture_output=True, text=True, timeout=300)

    result = mpirun("hardware.mpi=openmpi", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_json(tmp_path / "run" / "summary.json")
    assert (summary["status"], summary["world_size"]) == ("completed", 2)

    wrong = mpirun(f"hydra.run.dir={tmp_path / 'wrong'}")  # hardware=local says mpich
    assert wrong.returncode != 0
    assert wrong.stderr.count("hpcbench-train: error:") == 1, wrong.stderr[-2000:]  # rank 0 speaks for all
    assert re.search(r"^hpcbench-train: error: hardware.mpi=mpich, but the ranks run Open MPI v4\.\d+\.\d+: "
                     r"set hardware.mpi=openmpi, or start the ranks with MPICH's launcher$", wrong.stderr, re.M)


def test_a_rank_killed_under_open_mpi_is_named_with_its_host(tmp_path, open_mpi):
    job, pids = start_and_wait_for_an_epoch(tmp_path, [*DDP, *OPEN_MPI, "train.epochs=200"], env=open_mpi)
    killed_at = time.monotonic()
    os.kill(pids[1], signal.SIGKILL)
    _, stderr = job.communicate(timeout=90)
    assert job.returncode != 0 and time.monotonic() - killed_at < 60
    [run_dir] = run_dirs(tmp_path / "outputs")
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "failed"
    assert summary["error"].startswith(f"rank 1 on {socket.gethostname()} went missing"), summary["error"]


def test_the_launcher_of_the_profiles_mpi_is_found_whatever_else_is_installed(open_mpi):
    # The venv's mpich extra has an `mpirun` of MPICH's, first in the search: passed over for Open MPI.
    assert find_launcher("mpirun", "openmpi") == "/usr/bin/mpirun"
    assert find_launcher("mpiexec", "mpich") == os.path.join(os.path.dirname(sys.executable), "mpiexec")
    with pytest.raises(ConfigError, match=r"^hardware.mpi=intel: no Intel MPI mpiexec here; found MPICH's at .*, "
                                          r"Open MPI's at /usr/bin/mpiexec; load your cluster's Intel MPI module"):
        find_launcher("mpiexec", "intel")


def test_hpcbench_starts_intel_mpi_ranks_and_a_killed_one_is_named_with_its_host(tmp_path, intel_mpi):
    """Intel's process manager ends the survivors of a killed rank before they can say which one
    it was, unless told not to (MPICH's -disable-auto-cleanup and signal shell, mpi/launch.py)."""
    job, pids = start_and_wait_for_an_epoch(tmp_path, [*DDP, "hardware.mpi=intel", "train.epochs=200"], env=intel_mpi)
    [run_dir] = run_dirs(tmp_path / "outputs")
    assert read_json(run_dir / "env.json")["mpi"].startswith("Intel(R) MPI Library 2021.")  # Intel's libmpi, by path
    killed_at = time.monotonic()
    os.kill(pids[1], signal.SIGKILL)
    _, stderr = job.communicate(timeout=90)
    assert job.returncode != 0 and time.monotonic() - killed_at < 60
    assert f"starting 2 MPI ranks: {INTEL_MPI_PREFIX}/bin/mpiexec -disable-auto-cleanup -n 2 " in stderr
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "failed"
    assert summary["error"].startswith(f"rank 1 on {socket.gethostname()} went missing"), summary["error"]


def test_the_users_intel_mpiexec_runs_hpcbench_train_as_its_ranks(tmp_path, intel_mpi):
    result = subprocess.run([str(INTEL_MPI_PREFIX / "bin" / "mpiexec"), "-n", "2", sys.executable, "-m", "hpcbench.train",
                             *DDP, "hardware.mpi=intel", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                            env=cli_env(tmp_path, intel_mpi), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary, env = read_json(tmp_path / "run" / "summary.json"), read_json(tmp_path / "run" / "env.json")
    assert (summary["status"], summary["world_size"]) == ("completed", 2)
    assert env["mpi"].startswith("Intel(R) MPI Library 2021.")
