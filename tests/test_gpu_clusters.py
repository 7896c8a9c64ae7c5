"""GPU clusters, right the first time: what hpcbench decides for GPUs it cannot see here. The
rules run on their own (with the GPU queries answered as a GPU would), the GPU binding against
real Slurm (the test cluster's placeholder GPUs), the MPI start against a real hung MPI_Init. On a
GPU: tools/gpu_check.sh."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
from helpers import FAST_POLL, REPO, TINY, cli_env, compose_run, run_cli

from hpcbench.config import COLLECTIVE_TIMEOUT_S, COMPILE_COLLECTIVE_TIMEOUT_S, collective_timeout
from hpcbench.errors import ConfigError, DeviceError
from hpcbench.gpu_support import TorchBuild, build_runs_on, gpu_index, torch_build
from hpcbench.mpi.process_group import group_device
from hpcbench.mpi.topology import Topology
from hpcbench.slurm.resources import check_compute_environment, derive_request
from hpcbench.training.device import select_device

CUDA_13 = TorchBuild("2.14.1+cu130", "13.0", ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"))


@pytest.mark.parametrize(("local_rank", "local_size", "visible", "expected"), [
    (1, 2, 2, 1),  # every rank sees the node's GPUs: its own is its local rank
    (1, 2, 1, 0),  # per-task binding (--gpus-per-task=1, --gpu-bind=single|map_gpu): its own is device 0
    (3, 4, 1, 0),
    (0, 1, 4, 0),
])
def test_a_rank_uses_its_own_gpu_under_any_binding(local_rank, local_size, visible, expected):
    assert gpu_index(local_rank, local_size, visible) == expected


def test_a_rank_that_sees_some_but_not_all_gpus_is_refused():
    with pytest.raises(DeviceError, match="local rank 2 of 4 .* sees 2 GPUs"):
        gpu_index(2, 4, 2)


def _fake_gpus(monkeypatch, count: int, capability: tuple[int, int], name: str) -> list[int]:
    chosen: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    return chosen


def test_local_rank_1_under_per_task_binding_trains_on_the_one_gpu_it_sees(monkeypatch):
    chosen = _fake_gpus(monkeypatch, 1, (9, 0), "NVIDIA H100")  # this torch has sm_90 kernels
    topology = Topology(rank=3, world_size=4, local_rank=1, local_size=2, nodes=2)
    assert select_device("cuda", topology) == torch.device("cuda", 0) and chosen == [0]


def test_a_torch_build_without_the_gpus_kernels_is_refused_at_start(monkeypatch):
    _fake_gpus(monkeypatch, 2, (7, 0), "Tesla V100-SXM2-16GB")  # the original study's GPU
    if build_runs_on(torch_build(sys.executable).arch_flags, (7, 0)):
        pytest.skip("this torch build has sm_70 kernels")
    with pytest.raises(DeviceError, match=r"no kernels for the Tesla V100-SXM2-16GB \(sm_70; .*--index-url"):
        select_device("cuda", Topology())


@pytest.mark.parametrize(("flags", "capability", "runs"), [
    (["sm_75", "sm_80", "sm_90"], (7, 0), False),  # CUDA 13 wheels on a V100
    (["sm_70", "sm_80"], (7, 5), True),  # a cubin runs on later minor versions of its major
    (["sm_80"], (8, 6), True),
    (["sm_86"], (8, 0), False),
    (["sm_80"], (9, 0), False),
    (["sm_80", "compute_80"], (9, 0), True),  # PTX is compiled for any later GPU
    (["sm_90a"], (9, 0), True),
    (["sm_90a"], (10, 0), False),
])
def test_which_kernels_run_on_which_gpu(flags, capability, runs):
    assert build_runs_on(flags, capability) is runs


def test_the_refusal_says_which_build_to_install():
    problem = CUDA_13.problem_on((7, 0), "V100")
    assert problem.startswith("torch 2.14.1+cu130 (CUDA 13.0) has no kernels for the V100 (sm_70; it has sm_75")
    assert "--index-url https://download.pytorch.org/whl/cu126" in problem
    assert CUDA_13.problem_on((9, 0), "H100") is None
    assert "CPU-only build" in TorchBuild("2.14.1+cpu", None, ()).problem_on((9, 0), "H100")


def test_the_compute_nodes_interpreter_is_asked_about_its_own_torch():
    other_path = str(REPO / ".venv" / "bin" / "python3")  # the same environment by another name: a subprocess
    if not os.path.exists(other_path):
        pytest.skip("no .venv here")
    asked = torch_build(other_path)
    assert asked == torch_build(sys.executable) and asked.version == torch.__version__


def test_a_missing_compute_interpreter_is_refused_before_submission():
    run = compose_run(["hardware=param_utkarsh", "mode=cpu", "hardware.python=/nonexistent/envs/hpcbench/bin/python"])
    with pytest.raises(ConfigError, match="hardware.python=/nonexistent/envs/hpcbench/bin/python does not exist on this host"):
        check_compute_environment(run, derive_request(run))


def test_param_utkarsh_jobs_run_the_interpreter_of_the_environment_they_activate():
    run = compose_run(["hardware=param_utkarsh", "mode=ddp"])
    assert run.hardware.setup[-1] == "source activate hpcbench"
    assert derive_request(run).python == f"{os.environ['HOME']}/.conda/envs/hpcbench/bin/python"


def test_the_collective_timeout_allows_for_the_first_compiled_steps():
    assert collective_timeout(compose_run(["mode=ddp"])) == COLLECTIVE_TIMEOUT_S
    assert collective_timeout(compose_run(["mode=ddp", "train.compile=true"])) == COMPILE_COLLECTIVE_TIMEOUT_S
    assert collective_timeout(compose_run(["mode=ddp", "mode.collective_timeout_s=30"])) == 30
    srun_wait = [arg for arg in derive_request(compose_run(["hardware=ci_cluster", "mode=ddp", "train.compile=true"])).srun_args
                 if arg.startswith("--wait=")]
    assert srun_wait == [f"--wait={COMPILE_COLLECTIVE_TIMEOUT_S + 30}"]


def test_an_nccl_group_is_bound_to_the_ranks_gpu():
    gpu = torch.device("cuda", 0)
    assert group_device("nccl", gpu) == gpu
    assert group_device("gloo", torch.device("cpu")) is None and group_device("nccl", None) is None


def test_the_hardware_profile_chooses_the_ranks_network_for_every_rank():
    run = compose_run(["hardware=param_utkarsh", "hardware.nccl_socket_ifname=ib0", "hardware.nccl_ib_hca=mlx5_0",
                       "hardware.gloo_socket_ifname=ib0"])
    assert run.hardware.network_variables() == {"NCCL_SOCKET_IFNAME": "ib0", "NCCL_IB_HCA": "mlx5_0",
                                                "GLOO_SOCKET_IFNAME": "ib0"}


# -- MPI start ----------------------------------------------------------------------------------

def _start_mpi(env: dict, pass_fds=()) -> subprocess.CompletedProcess:
    program = ("import json, os; from hpcbench.mpi.topology import init_mpi; init_mpi(); "
               "print(json.dumps({k: os.environ.get(k) for k in ('MPIR_CVAR_ENABLE_GPU', 'OMPI_MCA_opal_cuda_support')}))")
    return subprocess.run([sys.executable, "-c", program], env={**os.environ, **env}, pass_fds=pass_fds,
                          capture_output=True, text=True, timeout=120)


def test_a_rank_hung_in_mpi_init_ends_with_one_line_naming_its_host():
    # A real hang: MPICH's PMI client sends its init command over PMI_FD and waits for an answer
    # that never comes (a socket nobody answers on), as when a process manager is lost.
    ours, theirs = socket.socketpair()
    with ours, theirs:
        started = time.monotonic()
        result = _start_mpi({"PMI_FD": str(theirs.fileno()), "PMI_RANK": "1", "PMI_SIZE": "2",
                             "HPCBENCH_MPI_START_TIMEOUT_S": "3"}, pass_fds=(theirs.fileno(),))
        assert b"cmd=init" in ours.recv(100)  # it did reach MPI_Init
    assert result.returncode != 0 and time.monotonic() - started < 60
    assert result.stderr.strip().splitlines() == [
        f"hpcbench: MPI did not start on {socket.gethostname()} (rank 1) within 3 s; check the launcher's MPI "
        f"plugin (srun --mpi=...) and MPI module, or raise HPCBENCH_MPI_START_TIMEOUT_S"]


def test_mpi_is_started_with_its_gpu_support_off_unless_the_user_chose():
    assert json.loads(_start_mpi({}).stdout) == {"MPIR_CVAR_ENABLE_GPU": "0", "OMPI_MCA_opal_cuda_support": "0"}
    chosen = json.loads(_start_mpi({"MPIR_CVAR_ENABLE_GPU": "1"}).stdout)
    assert chosen["MPIR_CVAR_ENABLE_GPU"] == "1"


# -- against real Slurm, with the test cluster's placeholder GPUs -------------------------------

def _gpu_choices(tmp_path, srun_options: list[str]) -> list[dict]:
    result = subprocess.run(["srun", "--mpi=pmi2", *srun_options, sys.executable, "-m", "hpcbench.gpu_support"],
                            capture_output=True, text=True, timeout=180, env=cli_env(tmp_path))
    assert result.returncode == 0, result.stderr
    return sorted((json.loads(line) for line in result.stdout.splitlines()), key=lambda choice: choice["rank"])


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
@pytest.mark.parametrize("binding", [
    ["--gpus-per-task=1"],
    ["--gres=gpu:2", "--gpu-bind=single:1"],
    ["--gres=gpu:2", "--gpu-bind=map_gpu:1,0"],
    ["--gres=gpu:2"],  # no binding: every rank sees both
])
def test_every_rank_of_a_node_picks_a_different_gpu_under_slurms_binding(tmp_path, binding):
    choices = _gpu_choices(tmp_path, ["-N2", "-n4", "--ntasks-per-node=2", *binding])
    for host in ("node1", "node2"):
        on_host = [choice for choice in choices if choice["host"] == host]
        assert sorted(choice["gpu"] for choice in on_host) == ["0", "1"], choices


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_the_launchers_gpu_request_gives_every_rank_its_own_gpu(tmp_path):
    request = derive_request(compose_run(["hardware=ci_cluster_gpu", "mode=ddp", "mode.ranks=4", "mode.nodes=2"]))
    options = [f"--nodes={request.nodes}", f"--ntasks-per-node={request.tasks_per_node}",
               f"--gpus-per-node={request.gpus_per_node}", *request.step_srun_args()]
    choices = _gpu_choices(tmp_path, options)
    assert [(c["host"], c["cuda_index"], c["gpu"]) for c in choices] == [
        ("node1", 0, "0"), ("node1", 1, "1"), ("node2", 0, "0"), ("node2", 1, "1")]


# -- the dry run -------------------------------------------------------------------------------

def test_the_dry_run_of_param_utkarsh_refuses_a_torch_build_without_v100_kernels(tmp_path):
    if build_runs_on(torch_build(sys.executable).arch_flags, (7, 0)):
        pytest.skip("this torch build has sm_70 kernels")
    result = run_cli(["-m", "hydra/launcher=slurm", "hydra.launcher.dry_run=true", "hardware=param_utkarsh",
                      f"hardware.python={sys.executable}", "mode=ddp", "mode.ranks=4", "mode.nodes=2",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}", *TINY], tmp_path, timeout=120)
    assert result.returncode == 2 and "Dry run" not in result.stdout
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("hpcbench-train: error: job #0 (hardware=param_utkarsh ")
    assert f"{sys.executable}: torch {torch.__version__} (CUDA {torch.version.cuda}) has no kernels for the V100 (sm_70" in line


@pytest.mark.slow
def test_ddp_ranks_that_cannot_use_their_gpus_stop_together_and_say_why_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    run_dir = tmp_path / "run"
    result = run_cli([*TINY, "mode=ddp", "mode.ranks=2", "mode.device=cuda", "hardware.partitions.local.gpus_per_node=2",
                      f"hydra.run.dir={run_dir}"], tmp_path, timeout=180)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"hpcbench-train: error: rank 0 on {socket.gethostname()}: mode=ddp needs a CUDA device"), last
    assert sorted(path.name for path in (run_dir / "ranks").glob("*.json")) == ["rank0.json", "rank1.json"]


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_a_slurm_job_whose_ranks_cannot_use_their_gpus_is_reported_with_the_ranks_line(tmp_path):
    # The placeholder GPUs have no device behind them: every rank stops at start, before rank 0
    # writes a summary; the launcher reads the ranks' records instead of a stderr tail.
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "hydra/launcher=slurm", FAST_POLL, "hydra.launcher.max_num_timeout=0",
                      "hardware=ci_cluster_gpu", "mode=ddp", f"hydra.sweep.dir={sweep}", *TINY], tmp_path, timeout=300)
    assert result.returncode != 0
    failed = [line for line in result.stderr.splitlines() if line.startswith("FAILED ")]
    assert len(failed) == 1 and ": rank 0 on node" in failed[0] and "needs a CUDA device" in failed[0], result.stderr
    assert sorted(path.name for path in (sweep / "0" / "ranks").glob("*.json")) == ["rank0.json", "rank1.json"]


# -- the data pipeline's choice per node ----------------------------------------------------------

class _Images:
    """An image source of `count` images of 224 x 224 (147 KiB each as uint8)."""

    def __init__(self, count: int):
        self.labels = [i % 10 for i in range(count)]

    def decode(self, indices):
        import numpy as np

        return np.zeros((len(indices), 224, 224, 3), dtype=np.uint8)


def _budget(gpu_gib: float, ram_gib: float):
    from hpcbench.data.choice import RESIDENT_SHARE, Budget

    return Budget(RESIDENT_SHARE * gpu_gib * 2**30, RESIDENT_SHARE * ram_gib * 2**30, "half of each")


def test_auto_keeps_the_data_on_every_gpu_of_a_node_whatever_the_ranks_per_node():
    # 40,000 images = 5.6 GiB: one copy per 16 GiB GPU fits (V100), and must fit for 2 and 8 ranks
    # per node alike (each rank's copy is on its own GPU), on a node with 512 GB of RAM.
    from hpcbench.data.choice import resident_fits

    for ranks in (1, 2, 8):
        run = compose_run(["mode=ddp", f"mode.ranks={ranks}", "mode.device=cuda"])
        fits, why = resident_fits(run, _Images(36_000), _Images(4_000), torch.device("cuda", 0), _budget(16, 512))
        assert fits, (ranks, why)


def test_auto_counts_what_the_ranks_of_a_node_build_in_its_ram():
    # 8 ranks building 5.6 GiB each, about 3 copies at once: 134 GiB, more than half of 192 GB.
    from hpcbench.data.choice import resident_fits

    run = compose_run(["mode=ddp", "mode.ranks=8", "mode.device=cuda"])
    fits, why = resident_fits(run, _Images(36_000), _Images(4_000), torch.device("cuda", 0), _budget(16, 192))
    assert not fits and "host memory while 8 rank(s) build them" in why
    cpu_run = compose_run(["mode=ddp", "mode.ranks=8", "mode.device=cpu"])  # CPU ranks' copies add up in RAM
    fits, why = resident_fits(cpu_run, _Images(36_000), _Images(4_000), torch.device("cpu"), _budget(16, 192))
    assert not fits and "per cpu device" in why
