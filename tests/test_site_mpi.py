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
from pathlib import Path

import pytest
from conftest import INTEL_MPI_PREFIX, OPEN_MPI_MPIRUN
from helpers import TINY, cli_env, read_json, run_cli, run_dirs, start_and_wait_for_an_epoch, worker_pids

from hpcbench.errors import ConfigError
from hpcbench.mpi.launch import find_launcher

DDP = [*TINY, "mode=ddp", "mode.ranks=2", "mode.device=cpu"]
OPEN_MPI = ["hardware.mpi=openmpi", "hardware.mpi_launcher=mpirun"]
PROFILES = {"mpich": [], "openmpi": OPEN_MPI, "intel": ["hardware.mpi=intel"]}
ENVIRONMENT = {"mpich": None, "openmpi": "open_mpi", "intel": "intel_mpi"}  # the fixture of each MPI's
USER_MODELS = str(Path(__file__).parent / "user_models")


def mpi_environment(request, implementation: str) -> dict:
    fixture = ENVIRONMENT[implementation]
    return {"PYTHONPATH": USER_MODELS, **(request.getfixturevalue(fixture) if fixture else {})}


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


@pytest.mark.parametrize("implementation", ["mpich", "openmpi", "intel"])
def test_a_stop_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path, request, implementation):
    """A user or a node agent signals one rank; every rank stops at the same step boundary, under
    each MPI's own launcher (Open MPI's mpirun ends the others when a rank exits early)."""
    env, profile = mpi_environment(request, implementation), PROFILES[implementation]
    job, pids = start_and_wait_for_an_epoch(tmp_path, [*DDP, *profile, "train.epochs=200"], env=env)
    signalled_at = time.monotonic()
    os.kill(pids[1], signal.SIGTERM)  # rank 1 only
    _, stderr = job.communicate(timeout=90)
    assert time.monotonic() - signalled_at < 30
    assert job.returncode == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert "stopped by a stop signal (1 of 2 ranks received one) at a step boundary" in stderr.strip().splitlines()[-1]
    [run_dir] = run_dirs(tmp_path / "outputs")
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "interrupted" and not (run_dir / "ranks").exists()
    if implementation != "mpich":
        return  # resuming does not depend on the MPI: once is enough
    # Resumable: the same command on the same directory continues after the last epoch.
    done = summary["epochs"]
    result = run_cli([*DDP, f"train.epochs={done + 1}", f"hydra.run.dir={run_dir}"], tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_json(run_dir / "summary.json")
    assert (summary["status"], summary["epochs"], summary["restarts"]) == ("completed", done + 1, 1)


@pytest.mark.parametrize("implementation", ["mpich", "openmpi", "intel"])
def test_a_rank_stuck_outside_any_collective_is_ended_soon_after_its_peer_failed(tmp_path, request, implementation):
    """Rank 0 fails with its own error while rank 1 blocks outside MPI (a hung file system, say):
    MPICH's and Intel's mpiexec -disable-auto-cleanup would wait for rank 1 forever; hpcbench ends
    it the collective timeout (2 s here) + STUCK_RANK_GRACE_S after rank 0's record."""
    model = ["+model._target_=stuck_rank.build", "model.name=stuck_rank", "mode.collective_timeout_s=2"]
    started = time.monotonic()
    result = run_cli([*DDP, *PROFILES[implementation], *model, "train.epochs=1"], tmp_path,
                     env=mpi_environment(request, implementation))
    assert time.monotonic() - started < 90 and result.returncode == 1, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    host = socket.gethostname()
    assert line.startswith(f"hpcbench-train: error: rank 0 on {host} failed first: RuntimeError: rank 0's own error"), line
    if implementation != "openmpi":  # Open MPI's mpirun ends the others itself when a rank exits non-zero
        assert line.endswith(f"rank 1 on {host} still ran 12 s later, outside any collective (a hung file system?), "
                             "and was ended"), line
    assert not worker_pids(str(tmp_path))  # no rank left behind
    [run_dir] = run_dirs(tmp_path / "outputs")
    assert read_json(run_dir / "summary.json")["status"] == "failed"


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
