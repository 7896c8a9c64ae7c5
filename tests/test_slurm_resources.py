"""The Slurm launcher without a cluster: discovery, per-job resources, capacity checks, sbatch text."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from helpers import TINY, compose_run, run_cli
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher

from hpcbench.errors import ConfigError
from hpcbench.slurm.arrays import plan_arrays
from hpcbench.slurm.resources import SlurmRequest, derive_request
from hpcbench.slurm.sbatch import check_script_values, sbatch_script

EXPECTED = Path(__file__).parent / "slurm" / "expected"
FOLDER = Path("/scratch/sweep/.submitit/%j")
PYTHON = "/opt/hpcbench/bin/python"


def test_the_launcher_plugin_is_discovered(tmp_path):
    names = [plugin.__name__ for plugin in Plugins.instance().discover(Launcher)]
    assert "SlurmLauncher" in names
    result = run_cli(["--info", "plugins"], tmp_path, timeout=120)
    assert "SlurmLauncher" in result.stdout


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["hardware=param_utkarsh", "mode=cpu"], dict(partition="cpu", nodes=1, tasks_per_node=1, cpus_per_task=40,
                                                       gpus_per_node=0, mem_gb=192, srun_args=())),
        (["hardware=param_utkarsh", "mode=gpu"], dict(partition="gpu", tasks_per_node=1, cpus_per_task=20,
                                                       gpus_per_node=1, gres="gpu:v100:1", mem_gb=96)),
        (["hardware=param_utkarsh", "mode=ddp"], dict(partition="gpu", nodes=1, tasks_per_node=2, cpus_per_task=20,
                                                       gpus_per_node=2, mem_gb=192, srun_args=("--mpi=pmix", "--wait=150"))),
        (["hardware=param_utkarsh", "mode=ddp", "hardware.mpi=mpich"], dict(srun_args=("--mpi=pmi2", "--wait=150"))),
        (["hardware=param_utkarsh", "mode=ddp", "hardware.srun_mpi=pmix_v4"], dict(srun_args=("--mpi=pmix_v4", "--wait=150"))),
        (["hardware=param_utkarsh", "mode=ddp", "mode.ranks=8", "mode.nodes=4"],
         dict(nodes=4, tasks_per_node=2, gpus_per_node=2)),
        (["hardware=param_utkarsh", "mode=ddp", "mode.device=cpu", "mode.ranks=4"],
         dict(partition="cpu", tasks_per_node=4, cpus_per_task=10, gpus_per_node=0)),
        (["experiment=original_study", "+original_study=serial_cpu"], dict(partition="cpu", cpus_per_task=4, mem_gb=19)),
        (["hardware=ci_cluster", "mode=cpu"], dict(partition="debug", cpus_per_task=1, mem_gb=2, timeout_min=30)),
        (["hardware=ci_cluster", "mode=ddp"], dict(partition="debug", tasks_per_node=2, cpus_per_task=1, mem_gb=4,
                                                  srun_args=("--mpi=pmi2", "--wait=150"))),
    ],
)
def test_each_job_gets_the_resources_its_own_config_needs(overrides, expected):
    request = derive_request(compose_run(overrides))
    assert {key: getattr(request, key) for key in expected} == expected


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["hardware=param_utkarsh", "mode=ddp", "mode.ranks=4"], "needs 4 GPUs per node, but partition gpu of hardware=param_utkarsh has 2; use mode.nodes=2"),
        (["hardware=param_utkarsh", "mode=cpu", "mode.cpus_per_rank=64"], "need 64 cores per node, but partition cpu of hardware=param_utkarsh has 40"),
        (["hardware=param_utkarsh", "hardware.cpu_partition=bigmem"], "hardware.cpu_partition=bigmem is not a partition of hardware=param_utkarsh (it has: cpu, gpu)"),
        (["hardware=ci_cluster", "mode=gpu"], "needs GPUs, but partition debug of hardware=ci_cluster has none"),
        (["hardware=ci_cluster", "mode=ddp", "mode.ranks=8"], "need 8 cores per node, but partition debug of hardware=ci_cluster has 4"),
        (["hardware=param_utkarsh", "mode=ddp", "mode.ranks=160", "mode.nodes=80"], "exceeds the 8 node(s)"),
        (["hardware=param_utkarsh", "hardware.time_limit_min=9000"], "exceeds the 4320 min limit"),
    ],
)
def test_requests_the_profile_cannot_hold_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        derive_request(compose_run(overrides))


# param_utkarsh's jobs call the conda environment its setup activates (hardware.python), here a
# fixed path so that the recorded files do not depend on $HOME.
UTKARSH = ["hardware=param_utkarsh", "hardware.python=/home/user/.conda/envs/hpcbench/bin/python"]
CASES = {
    "param_utkarsh_cpu": [*UTKARSH, "mode=cpu"],
    "param_utkarsh_gpu": [*UTKARSH, "mode=gpu"],
    "param_utkarsh_ddp_2x2": [*UTKARSH, "mode=ddp", "mode.ranks=4", "mode.nodes=2"],
    "ci_cluster_cpu": ["hardware=ci_cluster", "mode=cpu"],
    "ci_cluster_ddp": ["hardware=ci_cluster", "mode=ddp"],
    "ci_cluster_gpu_ddp_2x2": ["hardware=ci_cluster_gpu", "mode=ddp", "mode.ranks=4", "mode.nodes=2"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_sbatch_scripts_match_the_recorded_files(case):
    request = derive_request(compose_run(CASES[case]))
    text = sbatch_script(request, "hpcbench", FOLDER, array_size=3, python=PYTHON)
    expected = EXPECTED / f"{case}.sbatch"
    if os.environ.get("HPCBENCH_RECORD_SBATCH") == "1":  # re-record after a deliberate change; review the diff
        expected.parent.mkdir(parents=True, exist_ok=True)
        expected.write_text(text)
    assert text == expected.read_text()


def test_dry_run_prints_every_job_and_submits_nothing(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "hydra/launcher=slurm", "hydra.launcher.dry_run=true", "hardware=ci_cluster_gpu",
                      "mode=cpu,gpu,ddp", "+hardware.setup=[module load cuda]", f"hydra.sweep.dir={sweep}", *TINY],
                     tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Dry run: 3 run(s) in 3 Slurm job(s), 3 array(s); nothing is submitted." in out
    for mode, resources in [("cpu", "partition=debug nodes=1 tasks/node=1 cpus/task=1 mem=2GB"),
                            ("gpu", "partition=debug nodes=1 tasks/node=1 cpus/task=1, 1 GPU(s)/node"),
                            ("ddp", "partition=debug nodes=1 tasks/node=2 cpus/task=1, 2 GPU(s)/node")]:
        assert f"hardware=ci_cluster_gpu mode={mode}" in out
        assert resources in out
    assert out.count("#!/bin/bash") == 3 and "#SBATCH --gpus-per-node=2" in out
    assert out.count(f"  python:    {sys.executable}") == 3
    assert out.count("GPU binding: none: each rank sees all of its node's GPUs and uses the one of its local rank") == 2
    assert "--cpus-per-task=1 --mpi=pmi2 --wait=150" in out  # srun of Slurm 22.05 - 23.02 needs it repeated
    assert "module load cuda" in out
    assert not (sweep / "manifest.json").exists() and not (sweep / ".submitit").exists()


def test_a_sweep_with_one_impossible_job_is_refused_whole(tmp_path):
    result = run_cli(["-m", "hydra/launcher=slurm", "hydra.launcher.dry_run=true", "hardware=param_utkarsh",
                      f"hardware.python={sys.executable}", "mode=ddp", "mode.device=cpu", "mode.ranks=4,64",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"hpcbench-train: error: job #1 (hardware=param_utkarsh hardware.python={sys.executable} mode=ddp "
        f"mode.device=cpu mode.ranks=64): ")
    assert "Dry run" not in result.stdout


@pytest.mark.parametrize(("request_values", "job_name", "folder", "key"), [
    ({"comment": "x\ntouch pwned\n#"}, "hpcbench", FOLDER, "hydra.launcher.comment"),
    ({"additional_parameters": (("mail_user\ntouch pwned\n#", "me"),)}, "hpcbench", FOLDER,
     "hydra.launcher.additional_parameters.mail_user\\ntouch pwned\\n#"),
    ({"additional_parameters": (("mail_user", "me\r"),)}, "hpcbench", FOLDER, "hydra.launcher.additional_parameters.mail_user"),
    ({"srun_args": ("--mpi=pmi2", "--x\ty")}, "hpcbench", FOLDER, "hydra.launcher.srun_args"),
    ({"python": "/opt/py\nthon"}, "hpcbench", FOLDER, "hardware.python"),
    ({}, "name\n#", FOLDER, "hydra.launcher.name"),
    ({}, "hpcbench", Path("/scratch/a\nb/.submitit/%j"), "hydra.sweep.dir"),
])
def test_a_control_character_in_any_value_of_the_sbatch_script_is_refused(request_values, job_name, folder, key):
    with pytest.raises(ConfigError, match=f"^{re.escape(key)} holds the control character"):
        check_script_values(SlurmRequest(**request_values), job_name, folder)


def test_what_a_newline_would_do_to_the_script_and_what_is_left_alone():
    # What submitit writes for it, unchecked: the comment's second line is a shell command of the job.
    assert "touch pwned" in sbatch_script(SlurmRequest(comment="x\ntouch pwned\n#"), "hpcbench", FOLDER).splitlines()
    # The setup lines are shell lines by design; an ordinary request has nothing to refuse.
    check_script_values(SlurmRequest(setup=("module load openmpi/4.1.1", "printf 'a\\tb'")), "hpcbench", FOLDER)
    check_script_values(derive_request(compose_run(["hardware=param_utkarsh", "mode=ddp"])), "hpcbench", FOLDER)


def test_arrays_are_split_under_max_array_size_and_share_the_sweeps_parallelism():
    cpu, ddp = SlurmRequest(cpus_per_task=1), SlurmRequest(tasks_per_node=2)
    arrays = plan_arrays({cpu: list(range(7)), ddp: ["a", "b"]}, parallelism=256, max_size=3)
    assert [(a.request, a.jobs) for a in arrays] == [(cpu, [0, 1, 2]), (cpu, [3, 4, 5]), (cpu, [6]), (ddp, ["a", "b"])]
    assert [a.parallelism for a in arrays] == [3, 3, 1, 2]  # each runs whole: 256 is more than 9 jobs
    # At most 5 of the sweep's jobs at once: the small arrays take what they can use, the rest share.
    assert [a.parallelism for a in plan_arrays({cpu: list(range(7)), ddp: ["a"]}, 5, max_size=4)] == [2, 2, 1]
    assert [a.parallelism for a in plan_arrays({cpu: list(range(9))}, 2, max_size=3)] == [1, 1, 1]  # never 0
    assert sbatch_script(cpu, "hpcbench", FOLDER, array_size=3, parallelism=2).count("#SBATCH --array=0-2%2") == 1
