"""The Slurm launcher on the real test cluster (tests/cluster/cluster.sh; .ci/run starts it).

Skipped with a reason on a developer machine without a running cluster; under CI (CI=true) a
missing cluster is a failure, never a skip (conftest.slurm_cluster).
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from helpers import FAST_POLL, TINY, job_count, manifest, read_json, run_cli, sacct
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]


SLURM = ["-m", "hydra/launcher=slurm", FAST_POLL, "hardware=ci_cluster", *TINY, "train.epochs=1"]


def _image_folder(root: Path) -> Path:
    for split in ("train", "test"):
        for label, colour in enumerate([(250, 0, 0), (0, 0, 250)]):
            for i in range(8):
                path = root / split / f"class{label}" / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (32, 32), tuple(max(0, c - 10 * i) for c in colour)).save(path)
    return root


def test_a_failing_job_is_reported_and_the_others_finish(tmp_path):
    good = _image_folder(tmp_path / "images")
    sweep = tmp_path / "sweep"
    result = run_cli([*SLURM, "mode=cpu", "data=image_folder", "data.limit_train=16", "data.limit_test=16",
                      f"data.root={tmp_path / 'missing'},{good}", f"hydra.sweep.dir={sweep}"], tmp_path, timeout=600)
    assert result.returncode != 0
    jobs = {job["num"]: job for job in manifest(sweep)["jobs"]}
    failed_id = jobs[0]["slurm_job_id"]
    assert jobs[0]["state"] == "FAILED" and jobs[0]["error"] == f"Slurm job {failed_id} FAILED"
    assert jobs[1]["state"] == "COMPLETED"
    # The run's own one-line error, not a traceback, and where the job's log is.
    [line] = [line for line in result.stderr.splitlines() if f"Slurm job {failed_id} ended FAILED: " in line]
    assert "DataError: image folder" in line and "missing/train does not exist" in line and "(log: " in line
    assert "Traceback" not in result.stderr
    assert read_json(sweep / "0" / "summary.json")["status"] == "failed"
    assert read_json(sweep / "1" / "summary.json")["status"] == "completed"


@pytest.mark.parametrize("overrides", [["mode=cpu,ddp", "mode.ranks=1,8"], ["mode=cpu", "hardware.cpu_partition=gpu"]])
def test_impossible_requests_are_refused_before_anything_is_submitted(tmp_path, overrides):
    before = job_count()
    result = run_cli([*SLURM, *overrides, f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, timeout=120)
    assert result.returncode == 2
    assert "hpcbench-train: error: job #" in result.stderr
    assert job_count() == before
    assert not (tmp_path / "sweep" / "manifest.json").exists()


def test_one_multirun_submits_cpu_and_ddp_jobs_with_their_own_resources_and_status_follows_them(tmp_path):
    """Submitted without waiting (hydra.launcher.wait=false), followed with hpcbench-status; then
    what Slurm itself recorded for each job: 1 task vs 2 tasks."""
    sweep = tmp_path / "sweep"
    started = time.monotonic()
    result = run_cli([*SLURM, "hydra.launcher.wait=false", "mode=cpu,ddp", f"hydra.sweep.dir={sweep}"], tmp_path,
                     timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"hpcbench-status {sweep}" in result.stdout  # Hydra logs the launcher to stdout
    assert len(manifest(sweep)["jobs"]) == 2
    status = None
    while time.monotonic() - started < 300:
        status = run_cli([str(sweep)], tmp_path, timeout=60, module="hpcbench.slurm.status")
        if status.stdout.count("COMPLETED") == 2:
            break
        time.sleep(0.5)
    assert status is not None and status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("completed 1/1 epochs") == 2
    assert {job["state"] for job in manifest(sweep)["jobs"]} == {"COMPLETED"}

    jobs = {job["num"]: job for job in manifest(sweep)["jobs"]}
    cpu, ddp = jobs[0], jobs[1]
    assert sacct(cpu["slurm_job_id"], "NTasks") in ("", "1") and sacct(cpu["slurm_job_id"], "State") == "COMPLETED"
    assert sacct(ddp["slurm_job_id"], "State") == "COMPLETED"
    steps = subprocess.run(["sacct", "-n", "-P", "-j", ddp["slurm_job_id"], "--format=JobID,NTasks"], capture_output=True,
                           text=True, timeout=30).stdout
    assert any(line.split("|")[1] == "2" for line in steps.splitlines() if "|" in line), steps
    assert (cpu["request"]["tasks_per_node"], ddp["request"]["tasks_per_node"]) == (1, 2)
    for run_dir, world in [(sweep / "0", 1), (sweep / "1", 2)]:
        summary = read_json(run_dir / "summary.json")
        assert (summary["status"], summary["world_size"]) == ("completed", world)
        for name in ("metrics.jsonl", "env.json", "resolved_config.yaml", ".hydra/config.yaml", "checkpoints/best.pt"):
            assert (run_dir / name).exists(), (run_dir, name)
    assert read_json(sweep / "1" / "env.json")["slurm"]["SLURM_JOB_ID"]


def test_a_sweep_past_the_users_max_submit_jobs_is_refused_before_anything_is_submitted(tmp_path):
    before = job_count()
    subprocess.run(["sacctmgr", "-i", "modify", "user", "root", "set", "MaxSubmitJobs=2"], check=True, timeout=30)
    try:
        result = run_cli([*SLURM, "mode=cpu", "train.seed=1,2,3", f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path,
                         timeout=120)
    finally:
        subprocess.run(["sacctmgr", "-i", "modify", "user", "root", "set", "MaxSubmitJobs=-1"], check=True, timeout=30)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "this sweep submits 3 job(s), but user root may have 2 in the queue (MaxSubmitJobs of account root)" in line
    assert job_count() == before
