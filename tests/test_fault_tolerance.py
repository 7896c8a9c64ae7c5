"""Resume after kills, safe loading, divergence, shell safety, bad input, concurrency."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY, compose_run, read_json, read_metrics, run_cli, run_dirs, start_cli, table_rows
from PIL import Image

from hpcbench.errors import DataError, WeightsError
from hpcbench.models import build_model, pretrained_weights_path
from hpcbench.training.checkpoint import CheckpointError, safe_load
from hpcbench.training.trainer import fit

pytestmark = pytest.mark.slow

COMPARED = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr")
THREE_EPOCHS = [*TINY, "train.epochs=3", "data.num_workers=1"]
# A run that a test only starts from, or compares with, is trained in this process (fit): the
# command line is what the test then runs, each CLI start costs seconds of imports, and an
# in-process run equals the CLI's exactly (test_train_cpu).


def _metrics(run_dir: Path) -> list[list]:
    return [[m[k] for k in COMPARED] for m in read_metrics(run_dir)]


def _wait_for_epochs(run_dir: Path, epochs: int, process: subprocess.Popen, timeout: float = 180) -> None:
    """Until `epochs` epochs are in metrics.jsonl and a checkpoint is written."""
    deadline = time.monotonic() + timeout
    metrics = run_dir / "metrics.jsonl"
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= epochs
               and (run_dir / "checkpoints" / "last.pt").is_file()):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended or stalled"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """THREE_EPOCHS trained without a break: what every resumed run of this module must equal."""
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    fit(compose_run(THREE_EPOCHS), run_dir)
    return run_dir


def test_a_killed_run_resumes_to_exactly_the_uninterrupted_metrics(tmp_path, uninterrupted):
    killed = tmp_path / "killed"
    process = start_cli([*THREE_EPOCHS, f"hydra.run.dir={killed}"], tmp_path, new_session=True)
    _wait_for_epochs(killed, 1, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert len(read_metrics(killed)) < 3

    result = run_cli([*THREE_EPOCHS, f"hydra.run.dir={killed}"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "resuming after epoch" in (killed / "train.log").read_text()
    assert _metrics(killed) == _metrics(uninterrupted)
    summary = read_json(killed / "summary.json")
    assert summary["status"] == "completed" and summary["restarts"] == 1
    assert summary["resumed_from_epochs"][0] in (1, 2)
    assert summary["total_time_s"] >= sum(m["epoch_time_s"] for m in read_metrics(killed)) * 0.99
    assert summary["best_test_acc"] == read_json(uninterrupted / "summary.json")["best_test_acc"]


def test_a_completed_run_is_not_trained_again(tmp_path):
    run_dir = tmp_path / "run"
    fit(compose_run(TINY), run_dir)
    before = (run_dir / "metrics.jsonl").stat().st_mtime_ns
    result = run_cli([*TINY, f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 0
    assert "already holds a completed run" in result.stderr
    assert (run_dir / "metrics.jsonl").stat().st_mtime_ns == before


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"  # keeps every checkpoint, so it can be extended to 3 epochs
    fit(compose_run([*THREE_EPOCHS, "train.epochs=2", "train.keep_checkpoints=all"]), run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # a write cut short
    result = run_cli([*THREE_EPOCHS, f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 0, result.stderr
    log = (run_dir / "train.log").read_text()
    assert "truncated or corrupt" in log and "resuming after epoch 1" in log
    assert _metrics(run_dir) == _metrics(uninterrupted)


def test_unreadable_checkpoints_stop_the_run_instead_of_starting_over(tmp_path):
    run_dir = tmp_path / "run"
    fit(compose_run([*TINY, "train.keep_checkpoints=all"]), run_dir)
    for name in ("last.pt", "last.prev.pt"):
        (run_dir / "checkpoints" / name).write_bytes(b"garbage")
    result = run_cli([*TINY, "train.epochs=3", f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]  # after a logged warning per unreadable file
    assert line.startswith("hpcbench-train: error: cannot resume") and "train.resume=false" in line
    assert len(read_metrics(run_dir)) == 2  # the metrics already there are untouched


class _Payload:
    """Pickles to a call of os.system: what a malicious checkpoint carries."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_carrying_code_is_refused_without_running_it(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match="not a plain checkpoint"):
        safe_load(evil)
    assert not marker.exists()

    run_dir = tmp_path / "run"  # the same file as a run's checkpoint to resume from
    (run_dir / "checkpoints").mkdir(parents=True)
    evil.rename(run_dir / "checkpoints" / "last.pt")
    result = run_cli([*TINY, f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 1 and "not a plain checkpoint" in result.stderr
    assert not marker.exists()

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # and as pretrained weights
    weights = pretrained_weights_path("resnet18")
    weights.parent.mkdir(parents=True)
    torch.save({"fc.weight": _Payload(marker)}, weights)
    with pytest.raises(WeightsError):
        build_model("resnet18", 10, pretrained=True)
    assert not marker.exists()


def test_a_non_finite_loss_stops_the_run_as_diverged(tmp_path):
    result = run_cli([*TINY, "train.lr=1e30"], tmp_path)
    assert result.returncode == 1
    assert "training diverged in epoch 1 (non-finite loss)" in result.stderr
    [run_dir] = run_dirs(tmp_path / "outputs")
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "diverged" and summary["diverged_epoch"] == 1


def test_no_config_value_reaches_a_shell(tmp_path):
    # The experiment name becomes part of the run directory, which is an argument of the MPI launch.
    result = run_cli([*TINY, "train.epochs=1", "mode=ddp", "mode.device=cpu", "experiment_name='x; touch pwned'"],
                     tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "pwned").exists()
    [run_dir] = run_dirs(tmp_path / "outputs")
    assert run_dir.name.endswith("_x; touch pwned") and read_json(run_dir / "summary.json")["world_size"] == 2
    # In a Slurm script every value is quoted.
    result = run_cli(["-m", "hydra/launcher=slurm", "hydra.launcher.dry_run=true", "hardware=ci_cluster",
                      "hydra.launcher.name='x; touch pwned'", f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert "#SBATCH --job-name='x; touch pwned'" in result.stdout
    assert not (tmp_path / "pwned").exists()
    # A newline would end its #SBATCH line (a comment, where quotes do not count): refused in one line.
    result = run_cli(["-m", "hydra/launcher=slurm", "hydra.launcher.dry_run=true", "hardware=ci_cluster",
                      "hydra.launcher.comment='x\ntouch pwned\n#'", f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert result.returncode == 2 and "Dry run" not in result.stdout
    assert result.stderr.strip() == ("hpcbench-train: error: hydra.launcher.comment holds the control character '\\n': "
                                     "it would break the line of the sbatch script it lands on (a newline starts a "
                                     "shell command); remove it")


def _image_tree(root: Path, broken: bool = False) -> Path:
    for split in ("train", "test"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (32, 32), (60 * i, 100, 0)).save(folder / f"{i}.jpg")
    if broken:
        (root / "train" / "b" / "9_broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return root


def _empty_folder(tmp_path):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "test").mkdir()
    return [f"data.root={tmp_path / 'empty'}", "data=image_folder"]


def _class_without_images(tmp_path):
    root = _image_tree(tmp_path / "tree")
    (root / "train" / "c").mkdir()
    return ["data=image_folder", f"data.root={root}"]


def _corrupt_jpeg(tmp_path):
    return ["data=image_folder", f"data.root={_image_tree(tmp_path / 'tree', broken=True)}", "data.limit_train=100"]


def _different_model_checkpoint(tmp_path):
    run_dir = tmp_path / "earlier"
    fit(compose_run([*TINY, "model=resnet18", "train.epochs=1"]), run_dir)
    return [f"hydra.run.dir={run_dir}"]


def _output_not_writable(tmp_path):
    (tmp_path / "a_file").write_text("")
    return [f"hydra.run.dir={tmp_path / 'a_file' / 'run'}"]


BAD_INPUT = [
    ("unknown option", lambda t: ["mode=gpux"], 2, "Could not find 'mode/gpux'"),
    ("misspelled key", lambda t: ["train.epoch=3"], 2, "Key 'epoch' not in 'TrainConfig'"),
    ("wrong type", lambda t: ["train.epochs=three"], 2, "could not be converted to Integer"),
    ("batch size 0", lambda t: ["batch_size.size=0"], 2, "batch_size.size must be positive, got 0"),
    ("epochs -1", lambda t: ["train.epochs=-1"], 2, "train.epochs must be positive, got -1"),
    ("global batch / ranks", lambda t: ["mode=ddp", "mode.ranks=3", "batch_size=global_64"], 2, "not divisible by mode.ranks=3"),
    ("more ranks than cores", lambda t: ["mode=ddp", "mode.device=cpu", "mode.ranks=1000"], 2, "need 1000 cores per node"),
    ("more GPUs than the profile", lambda t: ["mode=ddp", "mode.device=cuda"], 2, "has none"),
    ("dataset missing offline", lambda t: ["data=cifar10", "data.download=false", f"data.root={t / 'c10'}"], 1,
     "(data.download=false); stage it on a machine with internet: python -c \"import torchvision; "
     "torchvision.datasets.CIFAR10("),  # the staging command
    ("empty image folder", _empty_folder, 1, "has no class folders"),
    ("class without images", _class_without_images, 1, "train/c holds no images"),
    ("corrupt jpeg", _corrupt_jpeg, 1, "9_broken.jpg"),
    ("output not writable", _output_not_writable, 1, "Not a directory"),
    ("checkpoint of another model", _different_model_checkpoint, 1, "model.name: 'resnet18' there, 'mobilenet_v2' now"),
]


@pytest.mark.parametrize(("case", "make_args", "code", "message"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_gets_one_clear_line_and_damages_nothing(tmp_path, case, make_args, code, message):
    args = make_args(tmp_path)
    earlier = tmp_path / "outputs" / "runs" / "earlier_run"  # something already written
    earlier.mkdir(parents=True)
    (earlier / "summary.json").write_text('{"status": "completed"}')
    result = run_cli([*TINY, "train.epochs=3", *args], tmp_path)
    assert result.returncode == code, result.stderr
    # Log lines may come first (a broken image is found while training); the error is one line.
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("hpcbench-train: error:") and message in last, result.stderr
    assert "Traceback" not in result.stderr
    assert (earlier / "summary.json").read_text() == '{"status": "completed"}'


def test_two_sweeps_started_together_write_distinct_directories(tmp_path):
    args = ["-m", *TINY, "train.epochs=1", "batch_size.size=16,32",
            "mode.cpus_per_rank=1"]  # one core each: two sweeps on a 2-core machine
    sweeps = [start_cli(args, tmp_path) for _ in range(2)]
    errors = [sweep.communicate(timeout=300)[1] for sweep in sweeps]
    assert [sweep.returncode for sweep in sweeps] == [0, 0], errors
    directories = sorted((tmp_path / "outputs" / "sweeps").iterdir())
    assert len(directories) == 2
    for directory in directories:
        assert sorted(read_json(d / "summary.json")["status"] for d in run_dirs(directory)) == ["completed"] * 2


def test_the_report_reads_a_sweep_whose_jobs_still_run(tmp_path):
    sweep = tmp_path / "sweep"
    process = start_cli(["-m", *TINY, "train.epochs=1,50", f"hydra.sweep.dir={sweep}"], tmp_path, new_session=True)
    try:
        _wait_for_epochs(sweep / "1", 1, process)
        out = tmp_path / "report"
        result = run_cli([str(sweep), "--out", str(out)], tmp_path, timeout=120, module="hpcbench.report.cli")
        assert result.returncode == 0, result.stderr
        report = (out / "report.md").read_text()
        assert "Runs: 1 completed, 1 failed or incomplete" in report
        assert table_rows(report, "## Failed or incomplete runs")[0][:2] == ["sweep/1", "running"]
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def test_a_completed_run_keeps_what_keep_checkpoints_says(tmp_path):
    kept = {}
    for keep in ("best", "resumable", "all"):
        run_dir = tmp_path / keep
        fit(compose_run([*TINY, f"train.keep_checkpoints={keep}"]), run_dir)
        kept[keep] = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert kept == {"best": ["best.pt"], "resumable": ["best.pt", "last.pt"], "all": ["best.pt", "last.prev.pt", "last.pt"]}
    # The resume state holds no RNG state: every epoch seeds itself from (seed, epoch, rank).
    assert "rng" not in torch.load(tmp_path / "all" / "checkpoints" / "last.pt", weights_only=True)

    # A run that kept only its best weights cannot be extended: said in one line, nothing rewritten.
    before = {name: (tmp_path / "best" / name).read_bytes() for name in ("summary.json", "metrics.jsonl")}
    result = run_cli([*TINY, "train.epochs=3", f"hydra.run.dir={tmp_path / 'best'}"], tmp_path)
    assert result.returncode == 1
    assert "cannot be extended to train.epochs=3" in result.stderr.strip().splitlines()[-1]
    assert before == {name: (tmp_path / "best" / name).read_bytes() for name in before}

    # A resumable one can: it trains epoch 3 only.
    summary = fit(compose_run([*TINY, "train.epochs=3"]), tmp_path / "resumable")
    assert (summary.epochs, summary.restarts, summary.resumed_from_epochs) == (3, 1, [2])


def test_ranks_wait_for_slow_data_and_a_slow_checkpoint_longer_than_the_collective_timeout(tmp_path):
    # The collective timeout is 4 s. Rank 1 builds its data 6 s longer than rank 0 (a busy file
    # system): rank 0 waits for it in the store, not in DDP's first broadcast. Rank 0's first
    # checkpoint takes 6 s: the other rank waits for it in the store, not in its next collective.
    run_dir = tmp_path / "run"
    user_models = str(Path(__file__).parent / "user_models")
    result = run_cli([*TINY, "mode=ddp", "mode.ranks=2", "mode.device=cpu", "mode.collective_timeout_s=4",
                      "+model._target_=slow_to_save.build", "model.name=slow_to_save", "+model.args.delay_s=6",
                      "data._target_=slow_data.build", "data.name=slow_data", "+data.args.delay_s=6",
                      f"hydra.run.dir={run_dir}"], tmp_path, env={"PYTHONPATH": user_models})
    assert result.returncode == 0, result.stderr
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "completed" and summary["epochs"] == 2
    assert summary["total_time_s"] > 12


def test_a_collective_timeout_is_named_by_its_cause_not_by_the_frames_torch_appends():
    from hpcbench.mpi.failures import is_lost_peer, one_line

    error = RuntimeError("Got the following error when running the callback: RuntimeError: [/gloo/transport/tcp/"
                         "unbound_buffer.cc:78] Timed out waiting 4000ms for recv operation to complete\n\nAt:\n"
                         "  /work/main/hpcbench/training/timing.py(186): finished\n")  # as gloo's says it under DDP
    assert one_line(error).endswith("Timed out waiting 4000ms for recv operation to complete")
    assert is_lost_peer(error)


def test_a_ranks_own_error_is_its_own_whatever_its_words():
    import torch.distributed as dist

    from hpcbench.mpi.failures import is_lost_peer
    from hpcbench.mpi.process_group import PeerLost

    assert is_lost_peer(RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Read error "
                                     "[10.0.0.2]:41234: Connection reset by peer"))
    assert is_lost_peer(RuntimeError("NCCL communicator was aborted on rank 1."))
    assert is_lost_peer(dist.DistNetworkError("failed to recv, got 0 bytes"))
    assert is_lost_peer(PeerLost("rank(s) 1 went away before building the data (connection refused)"))
    # The rank's own: a hung file system, a failing disk, its DataLoader.
    assert not is_lost_peer(TimeoutError(110, "Connection timed out"))
    assert not is_lost_peer(OSError(5, "Input/output error: read error on /scratch/shard-000001.tar"))
    assert not is_lost_peer(RuntimeError("DataLoader timed out after 30 seconds"))
    assert not is_lost_peer(RuntimeError("read error in /work/main/hpcbench/mpi/process_group.py(140)"))


def test_an_error_from_a_dataloader_worker_is_named_once():
    from hpcbench.mpi.failures import one_line

    # What DataLoader re-raises in the training process: the worker's traceback, then its own line.
    error = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                      '  File "stream_pipeline.py", line 99, in __getitem__\n'
                      "hpcbench.errors.DataError: corrupt JPEG in shard train/shard-000001.tar, key 00000015: cut")
    assert one_line(error) == "DataError: corrupt JPEG in shard train/shard-000001.tar, key 00000015: cut"
