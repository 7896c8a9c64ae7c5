"""Packing small runs into few allocations (slurm/packing.py), planned: which runs share a Slurm
job, how many side by side, what the allocation asks for; and a packed run's state (monitor.py).
The packed sweep itself runs on the test cluster: tests/test_slurm_packing.py. And how a long sweep
is followed: the back-off of its polls."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import run_cli

from hpcbench.config import PartitionConfig
from hpcbench.errors import ConfigError
from hpcbench.slurm.monitor import packed_run_state
from hpcbench.slurm.packing import plan_allocations
from hpcbench.slurm.planning import PlannedJob
from hpcbench.slurm.resources import SlurmRequest

NODE = PartitionConfig(cores_per_node=16, gpus_per_node=4, memory_gb=64, time_limit_min=240)
CPU_RUN = SlurmRequest(partition="cpu", cpus_per_task=4, mem_gb=8, timeout_min=60)
GPU_RUN = SlurmRequest(partition="gpu", cpus_per_task=2, gpus_per_node=1, gres="gpu:v100:1", mem_gb=8, timeout_min=30)
DDP_RUN = SlurmRequest(partition="cpu", nodes=2, tasks_per_node=2, cpus_per_task=4, srun_args=("--mpi=pmi2",))


def _jobs(request: SlurmRequest, count: int, start: int = 0, partition: PartitionConfig = NODE) -> list[PlannedJob]:
    return [PlannedJob(n, [f"train.seed={n}"], Path(f"/sweep/{n}"), request, partition) for n in range(start, start + count)]


def test_alike_runs_share_allocations_side_by_side_as_the_node_holds_and_in_turn_beyond():
    allocations = plan_allocations(_jobs(CPU_RUN, 10), runs_per_allocation=8)
    assert [len(a.jobs) for a in allocations] == [8, 2]
    full, rest = allocations
    # 16 cores / 4 a run: 4 side by side, the other 4 after them, in the same 4 slots.
    assert full.slots == 4 and full.request.tasks_per_node == 4 and full.request.cpus_per_task == 4
    assert full.request.mem_gb == 32 and full.request.timeout_min == 120 and "--cpu-bind=cores" in full.request.srun_args
    assert [job.num for job in full.slot_jobs(1)] == [1, 5] and full.slot_of(5) == 1
    assert rest.slots == 2 and rest.request.tasks_per_node == 2 and rest.request.timeout_min == 60


def test_gpu_runs_each_get_their_own_gpu_and_memory_bounds_the_slots_too():
    [allocation] = plan_allocations(_jobs(GPU_RUN, 6), runs_per_allocation=6)
    assert allocation.slots == 4  # 4 GPUs a node, though 8 runs' cores would fit
    assert allocation.request.gres == "gpu:v100:4" and allocation.request.gpus_per_node == 4
    assert "--gpus-per-task=1" in allocation.request.srun_args
    big = SlurmRequest(partition="cpu", cpus_per_task=1, mem_gb=30, timeout_min=10)
    assert plan_allocations(_jobs(big, 4), runs_per_allocation=4)[0].slots == 2  # 64 GB hold two runs of 30


def test_ddp_runs_and_other_requests_keep_their_own_jobs_in_the_sweeps_order():
    jobs = [*_jobs(CPU_RUN, 2), *_jobs(DDP_RUN, 1, start=2), *_jobs(GPU_RUN, 2, start=3)]
    allocations = plan_allocations(jobs, runs_per_allocation=4)
    assert [[job.num for job in a.jobs] for a in allocations] == [[0, 1], [2], [3, 4]]
    assert [a.packed for a in allocations] == [True, False, True] and allocations[1].request == DDP_RUN
    assert all(not a.packed for a in plan_allocations(jobs, runs_per_allocation=1))


def test_a_pack_past_the_partitions_time_limit_or_a_count_below_one_is_refused_in_one_line():
    with pytest.raises(ConfigError) as refused:
        plan_allocations(_jobs(CPU_RUN, 24), runs_per_allocation=24)
    assert str(refused.value) == (
        "hydra.launcher.runs_per_allocation=24: a node of partition cpu holds 4 of these runs side by side, so 6 run "
        "one after another, 6 x 60 min, past the partition's 240 min limit; use runs_per_allocation=16 or lower "
        "hardware.time_limit_min")
    with pytest.raises(ConfigError, match=r"^hydra.launcher.runs_per_allocation=0: give 1"):
        plan_allocations(_jobs(CPU_RUN, 2), runs_per_allocation=0)


@pytest.mark.parametrize(("allocation", "run", "expected"), [
    ("RUNNING", "completed", "COMPLETED"),  # its neighbours still run
    ("RUNNING", None, "RUNNING"),
    ("COMPLETED", "failed", "FAILED"),  # the slot went on after it failed
    ("COMPLETED", "running", "FAILED"),  # the allocation ended without it completing
    ("TIMEOUT", "running", "TIMEOUT"),
    ("PENDING", None, "PENDING"),
])
def test_a_packed_runs_state_is_its_own_once_it_has_one(allocation, run, expected):
    assert packed_run_state(allocation, run) == expected


def test_the_dry_run_shows_each_allocations_slots_and_runs(tmp_path):
    result = run_cli(["-m", "hydra/launcher=slurm", "hydra.launcher.dry_run=true", "hardware=ci_cluster",
                      f"hardware.python={sys.executable}", "mode=cpu", "mode.cpus_per_rank=1", "train.seed=range(0,10)",
                      "hydra.launcher.runs_per_allocation=8", f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Dry run: 10 run(s) in 2 Slurm job(s), 2 array(s)" in out
    assert "job 0: 8 runs packed: 4 side by side, up to 2 one after another in each slot" in out
    assert f"    slot 1: #5 hardware=ci_cluster hardware.python={sys.executable} mode=cpu mode.cpus_per_rank=1 " \
           f"train.seed=5  ({tmp_path / 'sweep' / '5'})" in out
    assert "#SBATCH --ntasks-per-node=4" in out and "#SBATCH --time=60" in out and "#SBATCH --mem=8GB" in out
    assert "job 0: 2 runs packed: 2 side by side" in out and "#SBATCH --ntasks-per-node=2" in out


def test_a_long_sweep_polls_less_often_while_nothing_changes_and_at_once_again_when_something_does():
    from hpcbench.slurm.monitor import MAX_POLL_S, next_poll_s

    assert next_poll_s(5, 5, changed=False, age_s=60) == 5  # young: the user's interval
    waits = [5.0]
    for _ in range(6):
        waits.append(next_poll_s(waits[-1], 5, changed=False, age_s=600))
    assert waits == [5, 10, 20, 40, MAX_POLL_S, MAX_POLL_S, MAX_POLL_S]
    assert next_poll_s(MAX_POLL_S, 5, changed=True, age_s=600) == 5


def test_the_report_says_which_runs_were_packed_and_whether_they_had_cores_of_their_own():
    from hpcbench.report.markdown import _packing

    share = {"slurm_job": "7_0", "slot": 1, "slots": 4, "runs": 12, "memory_mb": 2048}
    assert _packing([{"packed": None}, {}]) == []
    assert _packing([{"packed": {**share, "cores": [1]}}, {"packed": None}]) == [
        "- Packed: 1 of these runs shared a Slurm job with other runs (hydra.launcher.runs_per_allocation), "
        "1 of them bound to cores of their own"]
    [line] = _packing([{"packed": {**share, "cores": [1]}}, {"packed": {**share, "cores": None}}])
    assert line.endswith("1 of them bound to cores of their own (the others shared cores with their neighbours: "
                         "their times may be slower)")
