"""MPI + DDP on real MPI ranks (MPICH from PyPI, gloo on the CPU)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    MPIEXEC,
    TINY,
    free_port,
    one_step_result,
    read_json,
    read_metrics,
    run_cli,
    run_dirs,
    start_and_wait_for_an_epoch,
    start_cli,
    worker_pids,
)
from PIL import Image

from hpcbench.data.pipeline import build_pipeline
from hpcbench.data.sampling import train_shard_sampler
from hpcbench.data.sources import ImageFolderSource
from hpcbench.models import build_model
from hpcbench.mpi import lost_contact
from hpcbench.mpi.topology import SERIAL, Topology, threads_per_rank
from hpcbench.rundir import read_resolved_config
from hpcbench.training.step import StepOptions
from hpcbench.training.trainer import evaluate

pytestmark = pytest.mark.slow

DDP = [*TINY, "mode=ddp", "mode.ranks=2", "mode.device=cpu"]


def _mpiexec(args: list[str], cwd: Path, ranks: int = 2, timeout: float = 300, env: dict | None = None):
    full_env = {**os.environ, "HPCBENCH_OUTPUT_DIR": str(cwd / "outputs"), **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory) -> Path:
    """One 2-rank CLI run that the tests below read. The profile's choice of gloo's interface, to
    be seen reaching every rank, and of NCCL's, to be seen losing to the user's export; 75 test
    images, not divisible by 2 ranks, so DistributedSampler's padding would be visible in the test
    accuracy."""
    root = tmp_path_factory.mktemp("two_ranks")
    result = run_cli([*DDP, "hardware.nccl_socket_ifname=ib0", "hardware.gloo_socket_ifname=lo", "data.limit_test=75"],
                     root, env={"NCCL_SOCKET_IFNAME": "lo"})  # what the user exported stands over the profile
    assert result.returncode == 0, result.stderr
    [run_dir] = run_dirs(root / "outputs")
    return run_dir


def test_two_rank_run_writes_a_complete_run_directory(two_rank_run):
    run_dir = two_rank_run
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "completed"
    assert (summary["world_size"], summary["nodes"], summary["ranks_per_node"]) == (2, 1, 2)
    assert summary["global_batch"] == 64 and summary["batch_per_device"] == 32
    assert [m["epoch"] for m in read_metrics(run_dir)] == [1, 2]
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    env = read_json(run_dir / "env.json")
    assert env["mpi"].startswith("MPICH")
    assert env["communication"]["NCCL_SOCKET_IFNAME"] == env["communication"]["GLOO_SOCKET_IFNAME"] == "lo"
    assert env["communication"]["MPIR_CVAR_ENABLE_GPU"] == "0"  # ranks use MPI only to find each other
    # Two ranks share this machine's cores: each runs its share (or what OMP_NUM_THREADS says, as
    # in a parallel test session), and env.json says so.
    share = int(os.environ.get("OMP_NUM_THREADS", max(1, len(os.sched_getaffinity(0)) // 2)))
    assert env["torch_threads"] == summary["cores_per_rank"] == share
    log = (run_dir / "train.log").read_text()
    assert log.count("epoch 2/2") == 1  # rank 1 stays quiet


def test_a_cpu_ranks_threads_are_the_configs_then_slurms_then_omp_num_threads_then_a_share(monkeypatch):
    two_ranks = Topology(world_size=2, local_size=2, distributed=True)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads_per_rank(two_ranks) == max(1, len(os.sched_getaffinity(0)) // 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_per_rank(two_ranks) == 3
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "8")  # a login shell's OMP_NUM_THREADS exported into the job
    assert threads_per_rank(two_ranks) == 8
    assert threads_per_rank(two_ranks, cpus_per_rank=4) == 4


def test_the_process_that_starts_the_ranks_imports_no_torch():
    """Every DDP launch would otherwise spend seconds importing torch before any rank starts."""
    check = ("import sys, hpcbench.train, hpcbench.mpi.launch, hpcbench.rundir, hpcbench.training.continuation; "
             "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr


def test_ranks_started_by_the_user_share_one_run_directory(tmp_path):
    result = _mpiexec(["-m", "hpcbench.train", *DDP], tmp_path)
    assert result.returncode == 0, result.stderr
    [run_dir] = run_dirs(tmp_path / "outputs")
    assert read_json(run_dir / "summary.json")["world_size"] == 2
    assert len(list((tmp_path / "outputs" / "runs").iterdir())) == 1


def test_one_ddp_step_equals_one_serial_step_on_the_doubled_batch(tmp_path):
    result_file = tmp_path / "result.txt"
    program = str(Path(__file__).parent / "mpi_programs" / "one_step.py")
    result = _mpiexec([program, str(result_file)], tmp_path)
    assert result.returncode == 0, result.stderr
    worst, moved, nodes, world, implementation = one_step_result(result_file)
    assert (nodes, world, implementation) == (1, 2, "mpich")
    assert moved > 1e-4  # the step changed the parameters ...
    assert worst < 1e-5  # ... exactly as the serial step did


def test_global_test_accuracy_is_exact_and_matches_a_serial_evaluation(two_rank_run):
    run_dir = two_rank_run
    summary = read_json(run_dir / "summary.json")
    assert summary["test_images"] == 75

    run = read_resolved_config(run_dir)
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    model = build_model(run.model.name, len(best["classes"]))
    model.load_state_dict(best["model"])
    pipeline = build_pipeline(run, rank=0, world_size=1, device=torch.device("cpu"))
    options = StepOptions(summary["precision"], summary["channels_last"], compile=False)  # as the run evaluated
    serial = evaluate(options.prepare_model(model), pipeline.test_loader, torch.device("cpu"), SERIAL, options)
    assert serial.accuracy == summary["best_test_acc"]
    best_metrics = read_metrics(run_dir)[summary["best_epoch"] - 1]
    assert serial.loss == pytest.approx(best_metrics["test_loss"], rel=1e-5)


def test_two_ddp_runs_started_together_both_succeed(tmp_path):
    jobs = [start_cli([*DDP, "train.epochs=1"], tmp_path) for _ in range(2)]
    errors = [job.communicate(timeout=300)[1] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], errors
    dirs = run_dirs(tmp_path / "outputs")
    assert len(dirs) == 2
    assert all(read_json(d / "summary.json")["status"] == "completed" for d in dirs)


def test_killing_one_rank_ends_the_job_with_an_error_within_a_minute(tmp_path):
    job, pids = start_and_wait_for_an_epoch(tmp_path, [*DDP, "train.epochs=200"])
    killed_at = time.monotonic()
    os.kill(pids[1], signal.SIGKILL)
    _, stderr = job.communicate(timeout=90)
    assert job.returncode != 0
    assert time.monotonic() - killed_at < 60
    [run_dir] = run_dirs(tmp_path / "outputs")
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "failed"
    assert summary["error"].startswith(f"rank 1 on {socket.gethostname()} went missing"), summary["error"]
    assert stderr.strip().splitlines()[-1].startswith(f"hpcbench-train: error: rank 1 on {socket.gethostname()} went missing")
    assert "Traceback" not in stderr


def test_a_rank_killed_while_building_its_data_is_named_within_seconds(tmp_path):
    """The ranks wait for each other's data outside any collective (in rank 0's store, which waits
    long: a slow file system must not trip the collective timeout); rank 0 still learns within
    seconds that a rank it waits for is gone, from the rank's lost-contact port."""
    user_models = str(Path(__file__).parent / "user_models")
    job = start_cli([*DDP, "mode.collective_timeout_s=4", "data._target_=slow_data.build", "data.name=slow_data",
                     "+data.args.delay_s=600"], tmp_path, env={"PYTHONPATH": user_models})  # rank 1: 10 minutes
    deadline = time.monotonic() + 120
    while len(pids := worker_pids(str(tmp_path))) < 2 or not list((tmp_path / "outputs").rglob("summary.json")):
        assert time.monotonic() < deadline and job.poll() is None, "the ranks never started building their data"
        time.sleep(0.5)
    killed_at = time.monotonic()
    os.kill(pids[1], signal.SIGKILL)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode != 0 and time.monotonic() - killed_at < 30, stderr[-2000:]
    [run_dir] = run_dirs(tmp_path / "outputs")
    assert read_json(run_dir / "summary.json")["error"].startswith(f"rank 1 on {socket.gethostname()} went missing")


def test_a_rank_waiting_on_rank_0_when_a_peer_is_lost_is_not_named_missing(tmp_path):
    program = str(Path(__file__).parent / "mpi_programs" / "blocked_survivor.py")
    result_file = tmp_path / "line.txt"
    result = subprocess.run([MPIEXEC, "-disable-auto-cleanup", "-n", "3", sys.executable, program, str(tmp_path),
                             str(result_file)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    line = result_file.read_text()
    assert line.startswith(f"rank 2 on {socket.gethostname()} went missing"), (line, result.stderr[-2000:])
    assert read_json(tmp_path / "ranks" / "rank1.json")["lost_peer"]


def test_a_survivors_listener_takes_rank_0s_word_and_nothing_else():
    told = threading.Event()
    listener = lost_contact.Listener("127.0.0.1", told.set, secret="run-secret")
    try:
        with socket.create_connection(listener.address) as stranger:  # a port scanner, say
            stranger.sendall(b"GET / HTTP/1.0\r\n\r\n")
        lost_contact.tell([listener.address], "a-guess")  # anyone on the network who knows the protocol
        with socket.create_connection(listener.address) as stranger:
            stranger.sendall(b"hpcbench: lost contact \n")
        assert not told.wait(0.5)
        lost_contact.tell([listener.address, ("127.0.0.1", free_port())], "run-secret")  # a lost rank's port refuses
        assert told.wait(10)
    finally:
        listener.close()


def _image_folder_with_a_broken_image(root: Path) -> tuple[Path, int]:
    """A class-folder tree whose one unreadable training image lands in rank 1's first-epoch shard
    (for the seed returned): only rank 1 fails, with an error of its own."""
    for split in ("train", "test"):
        for label, colour in enumerate([(230, 30, 30), (30, 30, 230)]):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True)
            for i in range(8):
                Image.new("RGB", (32, 32), tuple(max(0, c - 12 * i) for c in colour)).save(folder / f"{i}.png")
    (root / "train" / "c1" / "9_broken.png").write_bytes(b"\x89PNG not really")
    broken = len(ImageFolderSource(root, "train").paths) - 1
    for seed in range(100):
        sampler = train_shard_sampler(broken + 1, rank=1, world_size=2, seed=seed)
        sampler.set_epoch(1)
        if broken in list(sampler):
            return root, seed
    raise AssertionError("no seed puts the broken image into rank 1's shard")


def test_a_failing_rank_is_named_in_one_line_and_its_traceback_kept(tmp_path):
    root, seed = _image_folder_with_a_broken_image(tmp_path / "images")
    result = run_cli([*DDP, "data=image_folder", f"data.root={root}", "data.pipeline=pil", "batch_size.size=4",
                      f"train.seed={seed}", "data.limit_train=null", "data.limit_test=null"], tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"hpcbench-train: error: rank 1 on {socket.gethostname()} failed first: DataError: "
                           f"cannot read image {root / 'train' / 'c1' / '9_broken.png'}"), line
    [run_dir] = run_dirs(tmp_path / "outputs")
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "failed" and summary["error"].startswith("rank 1 on")
    assert "Traceback" in (run_dir / "ranks" / "rank1.log").read_text()


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_configuration_that_leaves_a_rank_without_a_training_step_is_refused(tmp_path, ranks):
    mode = ["mode=ddp", "mode.ranks=2", "mode.device=cpu"] if ranks == 2 else []
    started = time.monotonic()
    result = run_cli([*TINY, *mode, f"data.limit_train={ranks}", "data.limit_test=1"], tmp_path)
    assert time.monotonic() - started < 60  # not the 120 s collective timeout
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert f"data.limit_train={ranks} gives each of the {ranks} rank(s) 1 training image(s) per epoch" in line


def test_a_rank_without_test_images_still_takes_part(tmp_path):
    result = run_cli([*DDP, "data.limit_train=8", "data.limit_test=1", "train.epochs=1"], tmp_path)
    assert result.returncode == 0, result.stderr
    [run_dir] = run_dirs(tmp_path / "outputs")
    summary = read_json(run_dir / "summary.json")
    assert (summary["status"], summary["test_images"]) == ("completed", 1)
    assert summary["best_test_acc"] in (0.0, 1.0)


def test_world_size_different_from_the_config_is_a_clear_error(tmp_path):
    result = _mpiexec(["-m", "hpcbench.train", *TINY, "mode=ddp", "mode.ranks=3", "mode.device=cpu"], tmp_path)
    assert result.returncode != 0
    assert "MPI started 2 processes but mode.ranks=3" in result.stderr


def test_a_launcher_that_could_not_start_the_ranks_is_quoted_and_its_stderr_passes_through(tmp_path, capfd):
    """srun's "task 2 launch failed" (a PMIx directory another test host had made, say) was the
    only word of why; the ranks, never started, leave no record."""
    from hpcbench.mpi import launch

    said = "import sys; sys.stderr.write('epoch 1: 50%\\r' + 'srun: error: task 2 launch failed: Unspecified error\\n'); sys.exit(137)"
    launcher = launch.run_ranks([sys.executable, "-c", said], tmp_path, world_size=4, grace_s=10)
    assert capfd.readouterr().err == "epoch 1: 50%\rsrun: error: task 2 launch failed: Unspecified error\n"
    assert (launcher.status, launcher.ended) == (137, "")
    error = launch.ranks_failed(tmp_path, 4, launcher)
    assert str(error) == (f"the 4 MPI ranks exited with status 137; srun: error: task 2 launch failed: Unspecified "
                          f"error (see {tmp_path / 'train.log'})")


def test_srun_without_mpi_plugin_singletons_are_detected(tmp_path):
    # What `srun -n 2` without --mpi starts: each task is an MPI world of size 1.
    result = run_cli(DDP, tmp_path, env={"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2"})
    assert result.returncode == 2
    assert "separate MPI worlds of size 1" in result.stderr and "--mpi=pmi2" in result.stderr


@pytest.mark.parametrize(("status", "fails"), [("completed", False), ("running", True)])
def test_a_launcher_that_dies_after_every_rank_finished_does_not_fail_the_run(status, fails, tmp_path, monkeypatch):
    """MPICH's mpiexec now and then dies of SIGPIPE in its teardown, after the ranks completed: the
    run directory, not the launcher's exit status, says whether the run is complete."""
    from helpers import compose_run

    from hpcbench.mpi import launch

    run = compose_run([*TINY, "mode=ddp", "mode.device=cpu"])
    def version(command, **_):
        return subprocess.CompletedProcess(command, 0, stdout="HYDRA build details:", stderr="")

    monkeypatch.setattr(launch.subprocess, "run", version)
    # MPICH's mpiexec, killed by SIGPIPE once the ranks have ended
    monkeypatch.setattr(launch, "run_ranks", lambda *_: launch.LauncherExit(-13, ended="", stderr_tail=""))
    (tmp_path / "summary.json").write_text(f'{{"status": "{status}"}}')
    if fails:
        with pytest.raises(launch.RanksFailed, match="exited with status -13"):
            launch.launch_ranks(run, tmp_path)
    else:
        launch.launch_ranks(run, tmp_path)
