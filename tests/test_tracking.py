"""MLflow tracking against a real `mlflow server` (sqlite backend) started by the tests: a Slurm
sweep whose compute hosts log to it over the test cluster's bridge, its UI in a real browser, and
a server stopped in the middle of a run."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import FAST_POLL, REPO, TINY, free_port, read_json, run_cli, start_cli

pytestmark = pytest.mark.slow
mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

from hpcbench.tracking.mlflow_run import sweep_status  # noqa: E402

BRIDGE_ADDRESS = "10.250.0.254"  # the root namespace on the test cluster's bridge (tests/cluster/cluster.sh)
ARTIFACTS = REPO / "outputs" / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
MLFLOW = str(Path(sys.executable).parent / "mlflow")


def _address() -> str:
    """The bridge's address when the test cluster is up (its hosts reach the server there), else loopback."""
    with socket.socket() as probe:
        try:
            probe.bind((BRIDGE_ADDRESS, 0))
            return BRIDGE_ADDRESS
        except OSError:
            return "127.0.0.1"


class Server:
    """`mlflow server` with a sqlite store in `folder`; start() and stop() any number of times."""

    def __init__(self, folder: Path, address: str):
        self.folder, self.address = folder, address
        self.port = free_port(address)
        self.uri = f"http://{address}:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> "Server":
        self.process = subprocess.Popen(
            [MLFLOW, "server", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
             "--artifacts-destination", str(self.folder / "artifacts"), "--host", self.address, "--port", str(self.port),
             "--workers", "1", "--allowed-hosts", f"{self.address}:{self.port},{self.address}",
             "--cors-allowed-origins", self.uri],  # its own UI, served from this address
            cwd=self.folder, stdout=subprocess.DEVNULL, stderr=open(self.folder / "server.log", "ab"),
            start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"mlflow server did not come up: {(self.folder / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 9)
            self.process.wait(timeout=30)

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow")
    running = Server(folder, _address()).start()
    yield running
    running.stop()


def _runs(client: MlflowClient, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def _epochs(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(int(m.step) for m in client.get_metric_history(run_id, "train_loss"))


@pytest.fixture(scope="module")
def logged_sweep(server, slurm_cluster, tmp_path_factory):
    """A Slurm sweep (a serial job and a 2-rank DDP job over the test hosts) logged live to the
    server, then its report uploaded with hpcbench-report --mlflow."""
    if server.address != BRIDGE_ADDRESS:
        pytest.skip("the test cluster's bridge is not here")
    root = tmp_path_factory.mktemp("tracked")
    sweep = root / "tracked-sweep"  # the parent run's name
    result = run_cli(["-m", "hydra/launcher=slurm", FAST_POLL, "hardware=ci_cluster",
                      "mode=cpu,ddp", "mode.device=cpu", "tracking=mlflow", f"tracking.uri={server.uri}",
                      "tracking.experiment=ci-sweep", f"hydra.sweep.dir={sweep}", *TINY], root, timeout=600)
    assert result.returncode == 0, result.stderr
    report = run_cli([str(sweep), "--out", str(root / "report"), "--mlflow", server.uri], root,
                     module="hpcbench.report.cli")
    assert report.returncode == 0, report.stderr
    assert "2 run(s) synced" in report.stdout
    return sweep


def test_a_slurm_sweep_is_a_parent_run_with_every_job_a_child(server, logged_sweep):
    client = server.client()
    runs = _runs(client, "ci-sweep")
    [parent] = [run for run in runs if run.data.tags.get("hpcbench.sweep_dir") == str(logged_sweep.resolve())]
    children = {run.data.params["mode.name"]: run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(children) == ["cpu", "ddp"]
    ddp = children["ddp"]
    assert ddp.info.status == "FINISHED" and ddp.data.params["mode.ranks"] == "2"
    tags = ddp.data.tags
    assert (tags["ranks"], tags["hardware"], tags["mode"]) == ("2", "ci_cluster", "ddp")
    assert tags["slurm_job_id"] and tags["hpcbench.study"] == children["cpu"].data.tags["hpcbench.study"]
    assert tags["hpcbench.configuration"] != children["cpu"].data.tags["hpcbench.configuration"]
    assert _epochs(client, ddp.info.run_id) == [1, 2]  # logged once each, live then not again by the upload
    metrics = ddp.data.metrics
    for phase in ("data_time_s", "compute_time_s", "comm_exposed_s", "optimizer_time_s", "samples_per_s", "lr", "test_acc"):
        assert phase in metrics, phase
    summary = read_json(logged_sweep / "1" / "summary.json")
    assert metrics["run.best_test_acc"] == pytest.approx(summary["best_test_acc"])
    assert {"summary.json", "resolved_config.yaml", "train.log"} <= {a.path for a in client.list_artifacts(ddp.info.run_id)}
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/scaling.csv", "report/speedup.png"} <= report
    assert parent.info.status == "FINISHED"


def test_a_sweep_with_a_failed_job_leaves_a_failed_parent_run_not_a_running_one(server, tmp_path):
    """Hydra ends a sweep (on_multirun_end) only when no job failed: the sweep's process marks its
    parent FAILED as it exits. A report uploaded later ends a parent by its runs' statuses."""
    sweep = tmp_path / "failing-sweep"
    result = run_cli(["-m", *TINY, "data=image_folder", f"data.root={tmp_path / 'missing'}", "tracking=mlflow",
                      f"tracking.uri={server.uri}", "tracking.experiment=failing", f"hydra.sweep.dir={sweep}"],
                     tmp_path)
    assert result.returncode != 0
    client = server.client()
    [parent] = [run for run in _runs(client, "failing") if run.data.tags.get("hpcbench.sweep_dir") == str(sweep.resolve())]
    assert parent.info.status == "FAILED"
    assert sweep_status(["completed", "completed"]) == "FINISHED" and sweep_status(["completed", "failed"]) == "FAILED"
    assert sweep_status(["interrupted"]) == "FAILED" and sweep_status(["completed", "running"]) is None
    assert sweep_status([]) is None  # a sweep whose runs have not started


def test_the_mlflow_ui_shows_the_sweeps_runs_in_a_real_browser(server, logged_sweep):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    client = server.client()
    experiment = client.get_experiment_by_name("ci-sweep").experiment_id
    names = sorted(run.info.run_name for run in _runs(client, "ci-sweep") if run.data.tags.get("mlflow.parentRunId"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(f"{server.uri}/#/experiments/{experiment}/runs")
        page.get_by_text(logged_sweep.name, exact=True).first.wait_for(timeout=60_000)  # the parent run
        page.locator("button[data-component-id*='runnamecellrenderer']").first.click()  # show its child runs
        for name in names:
            page.get_by_text(name, exact=False).first.wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "mlflow_ui.png"), full_page=True)
        text = page.inner_text("body")
        browser.close()
    assert "ci-sweep" in text and logged_sweep.name in text
    assert all(name in text for name in names), (names, text[:2000])


def test_a_tracker_stopped_mid_run_never_stops_the_run_and_the_rest_is_uploaded_later(server, tmp_path):
    """The module's server is stopped under a run and started again on its store (a server takes
    12-15 s to start here: one fewer than a server of the test's own)."""
    run_dir = tmp_path / "run"
    process = start_cli([*TINY, "train.epochs=4", "tracking=mlflow", f"tracking.uri={server.uri}",
                         "tracking.experiment=stopped", f"hydra.run.dir={run_dir}"], tmp_path)
    try:
        client = server.client()
        deadline = time.monotonic() + 180
        while not (_runs(client, "stopped") and _epochs(client, _runs(client, "stopped")[0].info.run_id)):
            assert process.poll() is None and time.monotonic() < deadline, "no epoch reached the server"
            time.sleep(0.3)
        server.stop()  # after the first epoch is logged
        _, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
        if server.process.poll() is not None:
            server.start()  # the same store: the upload completes the run that was cut off
    assert process.returncode == 0, stderr
    assert read_json(run_dir / "summary.json")["status"] == "completed"
    log = (run_dir / "train.log").read_text()
    assert log.count("MLflow tracking at") == 1 and f"hpcbench-report {run_dir}" in log  # said once, with the fix

    result = _upload(run_dir, tmp_path / "report", server.uri)
    assert result.returncode == 0, result.stderr
    store = MlflowClient(tracking_uri=f"sqlite:///{server.folder / 'mlflow.db'}")  # the server's own store
    [run] = [r for r in _runs(store, "stopped") if r.data.tags.get("hpcbench.run_dir")]  # (and the report's run)
    assert _epochs(store, run.info.run_id) == [1, 2, 3, 4] and run.info.status == "FINISHED"


@pytest.fixture(scope="module")
def offline_run(server, tmp_path_factory) -> Path:
    """A run with tracking.offline=true: it logs nothing while it trains."""
    root = tmp_path_factory.mktemp("offline")
    run_dir = root / "run"
    result = run_cli([*TINY, "tracking=mlflow", f"tracking.uri={server.uri}", "tracking.offline=true",
                      "tracking.experiment=offline", f"hydra.run.dir={run_dir}"], root)
    assert result.returncode == 0, result.stderr
    return run_dir


def _upload(run_dir: Path, report: Path, uri: str) -> subprocess.CompletedProcess:
    return run_cli([str(run_dir), "--out", str(report), "--mlflow", uri], report.parent, module="hpcbench.report.cli")


def test_an_unreachable_tracker_at_upload_is_one_line_and_the_report_is_kept(offline_run, tmp_path):
    port = free_port("127.0.0.1")
    result = _upload(offline_run, tmp_path / "report", f"http://127.0.0.1:{port}")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"hpcbench-report: error: MLflow at http://127.0.0.1:{port}: ") and "report" in last
    assert (tmp_path / "report" / "report.md").is_file()


def test_an_offline_run_logs_nothing_until_it_is_uploaded(server, offline_run, tmp_path):
    client = server.client()
    assert _runs(client, "offline") == []
    result = _upload(offline_run, tmp_path / "report", server.uri)
    assert result.returncode == 0, result.stderr
    runs = _runs(client, "offline")
    [run] = [r for r in runs if r.data.tags.get("hpcbench.run_dir") == str(offline_run.resolve())]
    assert _epochs(client, run.info.run_id) == [1, 2] and run.info.status == "FINISHED"
    [report] = [r for r in runs if r.data.tags.get("hpcbench.report_dir")]  # single runs: the report's own run
    assert "report/report.md" in {a.path for a in client.list_artifacts(report.info.run_id, "report")}


def test_the_tracker_sets_its_environment_before_its_thread_starts(tmp_path, monkeypatch):
    """setenv is not thread-safe while the main thread starts CUDA and DataLoader workers: the
    variables MLflow's client reads are set by the constructor, so the thread's connect() only
    reads them. The thread syncs nothing until the run directory changes."""
    from hpcbench.tracking.client_env import FAST_FAILURE
    from hpcbench.tracking.live import LiveTracker

    for name in FAST_FAILURE:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")  # the user's own value stays
    tracker = LiveTracker("http://127.0.0.1:9", "never-contacted", tmp_path, None)
    assert tracker._thread.is_alive() and tracker.syncs == 0
    assert {name: os.environ[name] for name in FAST_FAILURE} == {**FAST_FAILURE, "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
