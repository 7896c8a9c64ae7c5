"""Multi-node, proven on the test cluster: test hosts node1, node2 as network namespaces on this
machine, one slurmd each (tests/cluster/cluster.sh start --hosts 2; .ci/run starts it)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import OPEN_MPI_MPIRUN
from helpers import (
    FAST_POLL,
    MPIEXEC,
    REPO,
    TINY,
    cli_env,
    job_count,
    manifest,
    one_step_result,
    read_json,
    run_cli,
    run_dirs,
    sacct,
    start_cli,
    synthetic_shards,
)
from warm_cli import Started

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]

LAYOUTS = ["--config-dir", str(REPO / "tests" / "cluster" / "conf")]  # +layout=one_node|two_nodes
SLURM = [*LAYOUTS, "-m", "hydra/launcher=slurm", FAST_POLL, "hardware=ci_cluster", *TINY,
         "train.epochs=1", "mode.device=cpu"]  # flags before the overrides: argparse wants them there
CLUSTER = REPO / "tests" / "cluster" / "cluster.sh"
DDP_4_ON_2 = ["mode=ddp", "mode.ranks=4", "mode.nodes=2", "mode.device=cpu", *TINY, "train.epochs=1"]


def _node_address(host: str) -> str:
    return f"10.250.0.{host.removeprefix('node')}"


def _check_two_node_run(run_dir: Path) -> None:
    summary = read_json(run_dir / "summary.json")
    assert (summary["status"], summary["world_size"], summary["nodes"], summary["ranks_per_node"]) == (
        "completed", 4, 2, 2), summary
    env = read_json(run_dir / "env.json")
    hosts = env["rank_hosts"]
    assert sorted(set(hosts)) == ["node1", "node2"] and hosts.count(hosts[0]) == 2
    # Rank 0's store listens on its host's bridge address, where the other host's ranks reach it.
    assert env["store_address"].split(":")[0] == _node_address(hosts[0])


def test_one_sweep_runs_ddp_on_one_node_and_on_two(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli([*SLURM, "+layout=one_node,two_nodes", f"hydra.sweep.dir={sweep}"], tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    jobs = {job["num"]: job for job in manifest(sweep)["jobs"]}
    assert (jobs[0]["request"]["nodes"], jobs[1]["request"]["nodes"]) == (1, 2)
    one, two = jobs[0]["slurm_job_id"], jobs[1]["slurm_job_id"]
    # Slurm's own accounting: the 2-node job's step spans both hosts with 4 tasks.
    steps = subprocess.run(["sacct", "-n", "-P", "-j", two, "--format=JobID,NodeList,NTasks"], capture_output=True,
                           text=True, timeout=30).stdout.splitlines()
    assert any(line.split("|")[1:] == ["node[1-2]", "4"] for line in steps), steps
    assert sacct(one, "NNodes") == "1" and sacct(two, "NNodes") == "2"
    assert read_json(sweep / "0" / "summary.json")["nodes"] == 1
    _check_two_node_run(sweep / "1")


def test_the_launcher_starts_open_mpi_ranks_on_two_hosts_with_srun_and_pmix(tmp_path, open_mpi):
    """hpcbench's own way with the site's Open MPI: hardware.mpi=openmpi picks srun's pmix plugin."""
    sweep = tmp_path / "sweep"
    result = run_cli([*SLURM, "+layout=two_nodes", "hardware.mpi=openmpi", f"hydra.sweep.dir={sweep}"], tmp_path,
                     timeout=600, env=open_mpi)
    assert result.returncode == 0, result.stderr[-3000:]
    _check_two_node_run(sweep / "0")
    assert read_json(sweep / "0" / "env.json")["mpi"].startswith("Open MPI v4.")
    [script] = (sweep / ".submitit").rglob("*_submission.sh")
    assert " --mpi=pmix " in script.read_text()


@pytest.mark.parametrize(("plugin", "implementation"), [("pmi2", "mpich"), ("pmix", "openmpi")])
def test_one_ddp_step_across_two_hosts_equals_the_serial_step(tmp_path, plugin, implementation):
    """srun starts MPICH's ranks with its pmi2 plugin and Open MPI's with pmix (each test host has a
    PMIx directory of its own: tests/cluster/cluster.sh); the ranks load the library that matches."""
    result_file = tmp_path / "result.txt"
    program = REPO / "tests" / "mpi_programs" / "one_step.py"
    result = subprocess.run(["srun", "-N2", "-n4", "--ntasks-per-node=2", f"--mpi={plugin}", sys.executable,
                             str(program), str(result_file)], capture_output=True, text=True, timeout=300,
                            env=cli_env(tmp_path))
    assert result.returncode == 0, result.stderr
    worst, moved, nodes, world, ran = one_step_result(result_file)
    assert (nodes, world, ran) == (2, 4, implementation)
    assert moved > 1e-4 and worst < 1e-5


MPI_START = "from hpcbench.mpi.topology import init_mpi; init_mpi().COMM_WORLD.Barrier()"


def _netmod_summary(launcher: list[str], env: dict) -> str:
    """MPICH's own account of how `launcher` started hpcbench's MPI start-up."""
    result = subprocess.run([*launcher, sys.executable, "-c", MPI_START], capture_output=True, text=True, timeout=120,
                            env={**env, "MPIR_CVAR_DEBUG_SUMMARY": "1"})
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def test_mpi_starts_on_a_netmod_whose_address_slurms_pmi2_plugin_reads_whole(tmp_path):
    """Slurm's pmi2 plugin takes each PMI-1 command from one 1024-byte read(): MPICH's default UCX
    netmod puts a 4 KB address in ~1 KB segments, one of which now and then encodes to more and is
    cut in two, and every rank then waits in MPI_Init until the time limit (CI saw it). hpcbench's
    ranks start MPI on OFI (a 16-byte TCP address, one short put), unless the user chose a netmod.
    That choice is shown under MPICH's own mpiexec, whose PMI server reads whole lines: under srun
    UCX is the combination that fails by chance (CI saw this test do so)."""
    env = {k: v for k, v in cli_env(tmp_path).items() if k != "MPIR_CVAR_CH4_NETMOD"}
    ours = _netmod_summary(["srun", "-N2", "-n4", "--ntasks-per-node=2", "--mpi=pmi2", "--wait=30"], env)
    assert "provider: tcp" in ours and "UCX netmod" not in ours, ours[-2000:]
    local = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    chosen = _netmod_summary([MPIEXEC, "-n", "2"], {**local, "MPIR_CVAR_CH4_NETMOD": "ucx"})
    assert "UCX netmod" in chosen and "provider: tcp" not in chosen, chosen[-2000:]


def test_inside_an_allocation_the_ranks_are_started_with_srun(tmp_path):
    """The plain command in a user's own batch script (the original study's way; under salloc the
    same code path sees the same allocation)."""
    output = _run_batch_script(tmp_path, f"exec {sys.executable} -m hpcbench.train {' '.join(DDP_4_ON_2)} "
                                         f"hydra.run.dir={tmp_path / 'batch'}")
    assert "srun --mpi=pmi2 --wait=150 --ntasks 4 --nodes 2 --ntasks-per-node 2" in output, output
    _check_two_node_run(tmp_path / "batch")


def _run_batch_script(tmp_path: Path, body: str, env: dict | None = None) -> str:
    """sbatch a script of 2 nodes x 2 tasks; its output once it has COMPLETED."""
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/sh\n#SBATCH -N 2\n#SBATCH -n 4\n#SBATCH --ntasks-per-node=2\n{body}\n")
    job_id = subprocess.run(["sbatch", "--parsable", "-o", str(tmp_path / "job.out"), str(script)], cwd=tmp_path,
                            env=cli_env(tmp_path, env), capture_output=True, text=True, timeout=60,
                            check=True).stdout.strip()
    deadline = time.monotonic() + 300
    while sacct(job_id, "State") not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
        assert time.monotonic() < deadline, f"batch job {job_id} did not end"
        time.sleep(0.25)
    output = (tmp_path / "job.out").read_text()
    assert sacct(job_id, "State") == "COMPLETED", output
    return output


def test_the_original_studys_batch_script_with_open_mpis_mpirun(tmp_path, open_mpi):
    """Its own line (Open MPI 4.1, `mpirun --mca pml ob1 --mca btl tcp,self -np N python ...` in an
    sbatch allocation): mpirun starts its daemons on both hosts through Slurm, every rank is an
    hpcbench-train, and they load Open MPI's library from the same venv as MPICH's ranks."""
    _run_batch_script(tmp_path, f"exec {OPEN_MPI_MPIRUN} --mca pml ob1 --mca btl tcp,self -np 4 {sys.executable} "
                                f"-m hpcbench.train {' '.join(DDP_4_ON_2)} hardware.mpi=openmpi "
                                f"hydra.run.dir={tmp_path / 'batch'}", open_mpi)
    _check_two_node_run(tmp_path / "batch")
    assert read_json(tmp_path / "batch" / "env.json")["mpi"].startswith("Open MPI v4.")


@pytest.mark.parametrize("implementation", ["mpich", "intel"])
def test_mpiexec_across_the_hosts_without_slurm(tmp_path, request, implementation):
    """MPICH's mpiexec, and Intel MPI's (its own Hydra, PyPI's impi-rt with the system's
    libfabric), start their proxies through tests/cluster/netns_ssh, which stands in for ssh."""
    hostfile, ssh = tmp_path / "hosts", str(REPO / "tests" / "cluster" / "netns_ssh")
    hostfile.write_text("node1:2\nnode2:2\n")
    if implementation == "intel":
        extra = {**request.getfixturevalue("intel_mpi"), "I_MPI_HYDRA_HOST_FILE": str(hostfile),
                 "I_MPI_HYDRA_BOOTSTRAP": "ssh", "I_MPI_HYDRA_BOOTSTRAP_EXEC": ssh}
    else:
        extra = {"HYDRA_HOST_FILE": str(hostfile), "HYDRA_LAUNCHER": "ssh", "HYDRA_LAUNCHER_EXEC": ssh}
    env = {k: v for k, v in cli_env(tmp_path, extra).items() if not k.startswith("SLURM_")}
    command = ["ip", "netns", "exec", "node1", "unshare", "--uts", "sh", "-c", 'hostname node1; exec "$@"', "_",
               sys.executable, "-m", "hpcbench.train", *DDP_4_ON_2, "hardware=ci_cluster", "hardware.mpi_launcher=mpiexec",
               f"hardware.mpi={implementation}"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    [run_dir] = run_dirs(tmp_path / "outputs")
    _check_two_node_run(run_dir)
    assert read_json(run_dir / "env.json")["mpi"].startswith({"mpich": "MPICH", "intel": "Intel(R) MPI Library"}[implementation])


def _job_story(sweep: Path, job_id: str) -> str:
    """Slurm's view of a job and the tails of its logs: what a test that gave up on it shows."""
    show = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30).stdout
    fields = [f for f in show.split() if f.split("=")[0] in ("JobState", "Reason", "NodeList", "RunTime", "Restarts")]
    logs = [f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            for log in sorted((sweep / ".submitit").rglob("*.err")) + sorted(sweep.glob("*/train.log"))]
    return " ".join(fields) + f" sacct={sacct(job_id, 'State')}\n" + "\n".join(logs)


def _wait_for_first_epoch(sweep: Path, seconds: float = 300, launcher: Started | None = None) -> str:
    """Wait until the sweep's first job has finished an epoch; returns its Slurm job id. A job that
    ends, or a launcher that exits, before that fails the test at once, with the job's story."""
    metrics = sweep / "0" / "metrics.jsonl"
    deadline = time.monotonic() + seconds
    job_id = None
    while not (metrics.is_file() and metrics.read_text().strip()):
        if job_id is None and (sweep / "manifest.json").is_file():  # written once, at submission
            job_id = manifest(sweep)["jobs"][0]["slurm_job_id"]
        state = sacct(job_id, "State") if job_id else ""
        gone = state not in ("", "PENDING", "RUNNING", "REQUEUED") or (launcher and launcher.poll() is not None)
        if gone or time.monotonic() > deadline:
            if job_id is None:
                pytest.fail("the job never finished an epoch: not submitted")
            story = _job_story(sweep, job_id)
            subprocess.run(["scancel", job_id], timeout=30)  # so that it holds up no other test
            pytest.fail(f"job {job_id} never finished an epoch: {story}")
        time.sleep(0.5)
    return job_id or manifest(sweep)["jobs"][0]["slurm_job_id"]


def _pids_of_host(host: str) -> list[int]:
    output = subprocess.run(["ip", "netns", "pids", host], capture_output=True, text=True, timeout=30).stdout
    return [int(pid) for pid in output.split()]


def test_losing_a_host_fails_its_job_fast_names_what_went_missing_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    # The 2-node job takes every declared CPU of both hosts, so the serial job waits for it.
    launcher = start_cli([*SLURM, "+layout=two_nodes", "mode.cpus_per_rank=2", "train.epochs=200",
                          "hydra.launcher.max_num_timeout=0", f"hydra.sweep.dir={sweep}"], tmp_path)
    job_id = None
    try:
        job_id = _wait_for_first_epoch(sweep, launcher=launcher)
        other = start_cli([*SLURM, "mode=cpu", f"hydra.sweep.dir={tmp_path / 'other'}"], tmp_path)
        killed_at = time.monotonic()
        for pid in _pids_of_host("node2"):  # every process of the host: its ranks, slurmstepd, slurmd
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        while sacct(job_id, "State") in ("RUNNING", "PENDING", ""):
            assert time.monotonic() - killed_at < 60, "the job outlived its lost host by a minute"
            time.sleep(0.5)
        assert time.monotonic() - killed_at < 60
        assert sacct(job_id, "State") == "NODE_FAIL"  # final: submitted with --no-requeue (max_num_timeout=0)
        _, stderr = launcher.communicate(timeout=300)
        assert launcher.returncode != 0
        summary = read_json(sweep / "0" / "summary.json")
        assert summary["status"] == "failed"
        assert summary["error"].startswith("rank 2 on node2, rank 3 on node2 went missing"), summary["error"]
        assert f"Slurm job {job_id} ended" in stderr and "went missing" in stderr
        other.communicate(timeout=300)
        assert other.returncode == 0 and read_json(tmp_path / "other" / "0" / "summary.json")["status"] == "completed"
    finally:
        launcher.kill()
        if job_id:
            subprocess.run(["scancel", job_id], timeout=30)
        subprocess.run(["bash", str(CLUSTER), "slurmd", "2"], timeout=60)
        subprocess.run(["scontrol", "update", "nodename=node2", "state=resume"], timeout=30)
        _wait_until_idle()


def _wait_until_idle(seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while True:
        states = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, timeout=30).stdout
        if states.split() and set(states.split()) <= {"idle"}:
            return
        assert time.monotonic() < deadline, f"the cluster did not come back: {states}"
        time.sleep(0.25)


def test_a_drained_node_is_named_before_anything_is_submitted(tmp_path):
    before = job_count()
    subprocess.run(["scontrol", "update", "nodename=node2", "state=drain", "reason=maintenance"], check=True, timeout=30)
    try:
        result = run_cli([*SLURM, "+layout=two_nodes", f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, timeout=120)
    finally:
        subprocess.run(["scontrol", "update", "nodename=node2", "state=resume"], check=True, timeout=30)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "needs 2 node(s) of partition debug, but only 1 can run jobs now: node2 is drain" in line, line
    assert "(maintenance)" in line and job_count() == before


def test_a_requeued_two_node_job_resumes_and_ends_with_the_uninterrupted_metrics(tmp_path):
    """A DDP job is requeued as a whole: every rank, on both hosts, resumes from the same checkpoint
    and reduces its gradients as the uninterrupted run did (training/ddp.py). fp32: bf16 rounds the
    weights of the forward pass and so hides a drift in their last bits, which fp32 shows at once.
    The ranks stream a shard set larger than their memory budget (data.pipeline=auto -> stream):
    the resumed epochs read what the uninterrupted ones read."""
    shards = synthetic_shards(tmp_path / "data", train=256, test=64)
    budget_mb = sum(p.stat().st_size for p in shards.rglob("*.tar")) / 2**20 / 4
    settings = [*SLURM, "+layout=two_nodes", "train.epochs=3", "data.limit_train=256", "train.precision=fp32",
                "data=shards", f"data.root={shards}", f"data.memory_budget_mb={budget_mb}"]
    reference = tmp_path / "reference"
    assert run_cli([*settings, f"hydra.sweep.dir={reference}"], tmp_path, timeout=600).returncode == 0

    sweep = tmp_path / "sweep"
    launcher = start_cli([*settings, f"hydra.sweep.dir={sweep}"], tmp_path)  # followed to its end, as a user would
    job_id = _wait_for_first_epoch(sweep, launcher=launcher)
    metrics = sweep / "0" / "metrics.jsonl"
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=30)
    # Slurm holds a requeued job back (BeginTime) for a while; let it start at once.
    deadline = time.monotonic() + 300
    while "JobState=PENDING" not in subprocess.run(["scontrol", "show", "job", job_id], capture_output=True,
                                                   text=True, timeout=30).stdout:
        assert time.monotonic() < deadline, f"the requeued job never went back to PENDING: {_job_story(sweep, job_id)}"
        time.sleep(0.5)
    # The stopped attempt left no result, which the launcher would take as the job's end (job.py).
    assert not list((sweep / ".submitit").rglob("*_result.pkl")), _job_story(sweep, job_id)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, timeout=30)
    _, stderr = launcher.communicate(timeout=300)
    assert launcher.returncode == 0 and "FAILED" not in stderr, stderr[-3000:]
    assert sacct(job_id, "State") == "COMPLETED" and read_json(sweep / "0" / "summary.json")["status"] == "completed"
    summary = read_json(sweep / "0" / "summary.json")
    assert summary["restarts"] >= 1 and summary["nodes"] == 2 and summary["pipeline"] == "stream"
    log = (sweep / "0" / "train.log").read_text()
    assert "resuming after epoch" in log and "stream, the pipeline this run began with (kept on resume)" in log
    # What Slurm granted the job (ci_cluster: 2 GB per task, 2 tasks per node) is its memory, not the host's RAM.
    assert "the job may use 4.00 GiB (Slurm's --mem, SLURM_MEM_PER_NODE=4096 MB)" in log
    keys = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr")
    resumed = [[m[k] for k in keys] for m in map(json.loads, metrics.read_text().splitlines())]
    expected = [[m[k] for k in keys] for m in map(json.loads, (reference / "0" / "metrics.jsonl").read_text().splitlines())]
    assert resumed == expected
