"""A packed sweep on the 2-host test cluster (slurm/packing.py, slurm/slot.py): 24 small runs in 2
Slurm jobs, each 4 slots side by side with 3 runs in turn; one run killed, one allocation
requeued (3 runs in turn of 20 min each fit the test partition's hour). Planning alone is tested in tests/test_packing_plan.py."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import FAST_POLL, TINY, manifest, read_json, read_metrics, start_cli

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]

RUNS = 24
# Seeds 0-22, then 0 again: run #23 (the second allocation's last) is #0's twin, the reference
# for #0's resume.
SEEDS = ",".join(str(seed) for seed in [*range(RUNS - 1), 0])
# A small CNN whose training steps sleep half a second (4 steps an epoch): 24 runs cost the 2 cores
# little more than their start. Each run's first step of epoch 2 waits at a gate (a file the test
# makes) or for a stop signal, so the requeue finds run #0 in its second epoch.
SLOW_STEPS = ["+model._target_=slow_steps.build", "model.name=slow_steps", "+model.args.step_s=0.5",
              "+model.args.gate_after_steps=4"]
USER_MODELS = {"PYTHONPATH": str(Path(__file__).parent / "user_models")}
KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr")


def _slot_processes(array_task: str, slot: int) -> list[tuple[int, int]]:
    """(pid, parent pid) of the processes of one slot of a packed allocation (its task and the
    run it has forked), found by the environment srun gave the task."""
    array_id, _, index = array_task.partition("_")
    found = []
    for proc in Path("/proc").iterdir():
        try:
            environ = dict(item.split("=", 1) for item in (proc / "environ").read_bytes().decode().split("\0") if "=" in item)
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        if environ.get("SLURM_ARRAY_JOB_ID") == array_id and environ.get("SLURM_ARRAY_TASK_ID") == index \
                and environ.get("SLURM_PROCID") == str(slot) and "submitit" in (proc / "cmdline").read_text(errors="replace"):
            found.append((int(proc.name), parent))
    return found


def _wait(condition, what: str, launcher, sweep: Path, seconds: float = 300) -> None:
    """Until `condition()`; a launcher that exits first, or a timeout, fails the test with the logs."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline or launcher.poll() is not None:
            _, stderr = launcher.communicate(timeout=60) if launcher.poll() is not None else ("", "")
            logs = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-1500:]}" for p in sorted(sweep.rglob("*.err")))
            pytest.fail(f"{what} did not happen (launcher: {stderr[-2000:]})\n{logs}")
        time.sleep(0.1)


def _epochs_done(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_a_packed_sweep_keeps_each_runs_directory_failure_and_exact_resume(tmp_path):
    sweep, gate = tmp_path / "sweep", tmp_path / "gate"
    launcher = start_cli(["-m", "hydra/launcher=slurm", FAST_POLL, "hardware=ci_cluster", *TINY, *SLOW_STEPS,
                          f"+model.args.gate={gate}", "mode=cpu",
                          "mode.cpus_per_rank=1", "hardware.time_limit_min=20", "hydra.launcher.runs_per_allocation=12", f"train.seed={SEEDS}",
                          f"hydra.sweep.dir={sweep}"], tmp_path, env=USER_MODELS)
    _wait(lambda: (sweep / "manifest.json").is_file(), "the submission", launcher, sweep, 120)
    jobs = manifest(sweep)["jobs"]
    first, second = jobs[0]["slurm_job_id"], jobs[12]["slurm_job_id"]
    assert len(jobs) == RUNS and {job["slurm_job_id"] for job in jobs} == {first, second}
    assert [job["slot"] for job in jobs[:5]] == [0, 1, 2, 3, 0]

    # Kill run #13 (slot 1 of the second allocation, its first run) while it trains: its process only.
    _wait(lambda: (sweep / "13" / "summary.json").is_file(), "run #13's start", launcher, sweep)
    processes = _slot_processes(second, slot=1)
    [run_process] = [pid for pid, parent in processes if parent in {p for p, _ in processes}]
    os.kill(run_process, signal.SIGKILL)

    # Requeue the first allocation once run #0 has finished its first epoch (of two): it waits at the gate.
    _wait(lambda: _epochs_done(sweep / "0") >= 1, "run #0's first epoch", launcher, sweep)
    subprocess.run(["scontrol", "requeue", first], check=True, timeout=30)
    _wait(lambda: "JobState=PENDING" in subprocess.run(["scontrol", "show", "job", first], capture_output=True,
                                                        text=True, timeout=30).stdout, "the requeue", launcher, sweep)
    gate.touch()  # the other allocation's runs, and the requeued ones, go on
    subprocess.run(["scontrol", "update", f"JobId={first}", "StartTime=now"], check=True, timeout=30)

    _, stderr = launcher.communicate(timeout=400)
    assert launcher.returncode == 1, stderr
    failed = [line for line in stderr.splitlines() if line.startswith("FAILED ")]
    assert len(failed) == 1 and failed[0].startswith("FAILED #13 ") and f"Slurm job {second} slot 1 ended FAILED" \
        in failed[0] and "the run's process killed by SIGKILL" in failed[0], stderr
    status = subprocess.run([sys.executable, "-m", "hpcbench.slurm.status", str(sweep)], capture_output=True,
                            text=True, timeout=120)
    assert status.returncode == 1
    rows = {line.split()[0]: line for line in status.stdout.splitlines()[1:]}
    assert f"{second} slot 1  FAILED" in rows["#13"] and all("COMPLETED" in rows[f"#{n}"] for n in range(RUNS) if n != 13)

    for num in range(RUNS):
        run_dir = sweep / str(num)
        summary = read_json(run_dir / "summary.json")
        if num == 13:
            assert summary["status"] == "failed" and "killed by SIGKILL" in summary["error"]
            continue
        assert summary["status"] == "completed" and [m["epoch"] for m in read_metrics(run_dir)] == [1, 2], num
        packed = read_json(run_dir / "env.json")["packed"]
        assert packed["slot"] == num % 4 and packed["slots"] == 4 and packed["runs"] == 12
        assert packed["memory_mb"] == 2048  # ci_cluster: 2 GB a task, of the allocation's 8
    resumed = read_json(sweep / "0" / "summary.json")
    assert resumed["restarts"] == 1 and "resuming after epoch 1" in (sweep / "0" / "train.log").read_text()
    reference = [[m[k] for k in KEYS] for m in read_metrics(sweep / "23")]
    assert [[m[k] for k in KEYS] for m in read_metrics(sweep / "0")] == reference
