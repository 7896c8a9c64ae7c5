"""hydra/launcher=slurm for any Hydra application, tested the way Hydra tests launchers: Hydra's
own launcher test suite (apps with none of hpcbench's keys, jobs on the test cluster), and a
foreign app swept by the basic launcher and by this one, compared."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import FAST_POLL, REPO, cli_env, manifest, run_cli, sacct
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]

# A foreign app names its resources as hydra-submitit-launcher does.
RESOURCES = ["hydra.launcher.partition=debug", "hydra.launcher.timeout_min=5", "hydra.launcher.cpus_per_task=1",
             "hydra.launcher.mem_gb=1", FAST_POLL]
APP = REPO / "tests" / "foreign_app" / "app.py"


# The suite expects Hydra's pre-1.2 default of running each job in its own directory; importing
# hpcbench's app (helpers.py) set this session's version base to 1.3, where that is off.
@pytest.mark.parametrize(("launcher_name", "overrides"), [("slurm", [*RESOURCES, "hydra.job.chdir=True"])])
class TestHydrasLauncherSuite(LauncherTestSuite):
    """Sweeps of 1 and 2 jobs, two config groups, strict configs and a bad key, overrides of
    Hydra's own keys refused, a custom resolver: the jobs run on Slurm, the values come back."""

    # Hydra's suite for every launcher, less what repeats a case above (time on a 2-core machine).
    test_sweep_1_job_strict = None
    test_sweep_over_unspecified_mandatory_default = None


@pytest.mark.parametrize(("task_launcher_cfg", "extra_flags"), [({}, ["-m", "hydra/launcher=slurm", *RESOURCES])])
class TestHydrasIntegrationSuite(IntegrationTestSuite):
    """Apps written to a folder and run as `python task.py -m ...`: the job's name, its working
    directory (sweep dir and subdir from the app's config or the command line, override_dirname),
    the original working directory and to_absolute_path, inside jobs that ran on Slurm. The flags
    start with -m, as hydra-submitit-launcher's own run of this suite does: without it the apps
    run once in Hydra's run mode, the launcher is never asked, and the five workdir cases and
    to_absolute_path fail with the run directory outputs/<date>/<time>."""


def _sweep(launcher: list[str], sweep_dir: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(APP), "-m", "x=1,2,3", "hydra.job.name=foreign", *launcher,
                           f"hydra.sweep.dir={sweep_dir}", *extra], cwd=tmp_path, env=cli_env(tmp_path),
                          capture_output=True, text=True, timeout=600)


def _job_files(sweep_dir: Path) -> dict:
    return {str(p.relative_to(sweep_dir)): p.read_text() for p in sorted(sweep_dir.glob("*/result.txt"))} | {
        str(p.relative_to(sweep_dir)): yaml.safe_load(p.read_text()) for p in sorted(sweep_dir.glob("*/.hydra/overrides.yaml"))}


def test_a_foreign_app_sweeps_on_slurm_as_with_hydras_basic_launcher(tmp_path):
    basic = _sweep([], tmp_path / "basic", tmp_path)
    assert basic.returncode == 0, basic.stderr
    slurm = _sweep(["hydra/launcher=slurm", *RESOURCES], tmp_path / "slurm", tmp_path)
    assert slurm.returncode == 0, slurm.stderr
    assert _job_files(tmp_path / "slurm") == _job_files(tmp_path / "basic")
    assert (tmp_path / "slurm" / "1" / "result.txt").read_text() == "foreign 1 204\n"  # the resolver ran on Slurm
    jobs = manifest(tmp_path / "slurm")["jobs"]
    assert [job["request"]["partition"] for job in jobs] == ["debug"] * 3
    # The test cluster's MaxArraySize is 2: an array of 2 jobs and a lone job.
    assert [job["slurm_job_id"].count("_") for job in jobs] == [1, 1, 0]
    assert sacct(jobs[0]["slurm_job_id"], "JobName") == "foreign"  # hydra.job.name names the Slurm job
    status = run_cli([str(tmp_path / "slurm")], tmp_path, timeout=60, module="hpcbench.slurm.status")
    assert status.returncode == 0 and status.stdout.count("COMPLETED") == 3


def test_a_foreign_apps_failing_job_is_reported_and_its_resources_shown_in_a_dry_run(tmp_path):
    result = _sweep(["hydra/launcher=slurm", *RESOURCES], tmp_path / "sweep", tmp_path, "fail=false,true")
    assert result.returncode != 0
    assert "ended FAILED: stderr tail:" in result.stderr and "asked to fail (x=1)" in result.stderr
    assert not (tmp_path / "sweep" / "0" / "summary.json").exists()  # a foreign app's directory is left alone
    dry = _sweep(["hydra/launcher=slurm", *RESOURCES, "hydra.launcher.dry_run=true", "hydra.launcher.nodes=2",
                  "hydra.launcher.tasks_per_node=2", "hydra.launcher.srun_args=['--mpi=pmi2']"], tmp_path / "dry", tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "partition=debug nodes=2 tasks/node=2 cpus/task=1 mem=1GB/node time=5min, srun --mpi=pmi2" in dry.stdout
    assert "#SBATCH --job-name=foreign" in dry.stdout and "--mpi=pmi2" in dry.stdout
