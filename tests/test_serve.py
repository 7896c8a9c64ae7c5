"""Serving a trained run: CLI predictions, bad input, and the Gradio page in a real browser."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from helpers import REPO, compose_run, free_port, run_cli, start_cli
from PIL import Image

from hpcbench.data.pipeline import build_pipeline
from hpcbench.data.sources import ImageFolderSource, balanced_first_n
from hpcbench.models import build_model
from hpcbench.rundir import read_resolved_config
from hpcbench.serve.predictor import Predictor
from hpcbench.training.trainer import fit

pytestmark = pytest.mark.slow
ARTIFACTS = REPO / "outputs" / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"


SERVED_SIZE = 48  # not the 32 px of the images: evaluation resizes them, and serving must resize alike


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, cifar_root) -> Path:
    """A run trained on real CIFAR-10 (tiny settings, the default tensor pipeline) by the test itself."""
    run_dir = tmp_path_factory.mktemp("served") / "run"
    run = compose_run(["data=image_folder", f"data.root={cifar_root}", f"data.image_size={SERVED_SIZE}",
                       "data.limit_train=1000", "data.limit_test=40", "model=resnet18", "train.lr=1e-3",
                       "train.epochs=1", "batch_size=per_device_64"])
    fit(run, run_dir)
    return run_dir


def _predict(args: list[str]) -> subprocess.CompletedProcess:
    return run_cli(args, Path.cwd(), timeout=120, module="hpcbench.serve.predict_cli")


def _evaluation_batches(trained_run: Path):
    """The run's own test batches, from its own config and pipeline, and the files behind them."""
    run = read_resolved_config(trained_run)
    pipeline = build_pipeline(run, 0, 1, torch.device("cpu"))
    source = ImageFolderSource(Path(run.data.root), "test")
    files = [source.paths[i] for i in balanced_first_n(source.labels, run.data.limit_test)]
    images = torch.cat([batch for batch, _ in pipeline.test_loader])
    return images, files


def test_serving_sees_exactly_the_pixels_evaluation_saw(trained_run):
    images, files = _evaluation_batches(trained_run)
    predictor = Predictor(trained_run, device="cpu")
    with Image.open(files[0]) as first:
        assert first.size != (SERVED_SIZE, SERVED_SIZE)  # so the resize is part of what is compared
    served = torch.stack([predictor.transform(predictor.prepare(Image.open(path))) for path in files])
    assert served.shape == images.shape
    assert (served - images).abs().max().item() == 0.0


def test_cli_top1_equals_an_offline_evaluation_of_the_checkpoint(trained_run):
    images, files = _evaluation_batches(trained_run)
    checkpoint = torch.load(trained_run / "checkpoints" / "best.pt", weights_only=True)
    model = build_model("resnet18", len(checkpoint["classes"]), image_size=SERVED_SIZE)
    model.load_state_dict(checkpoint["model"])
    with torch.no_grad():
        offline = model.eval()(images).argmax(1).tolist()

    result = _predict([str(trained_run), *map(str, files), "--json"])
    assert result.returncode == 0, result.stderr
    served = [json.loads(line) for line in result.stdout.splitlines()]
    assert [s["label"] for s in served] == [checkpoint["classes"][i] for i in offline]
    assert all(len(s["top"]) == 3 and s["top"][0]["probability"] >= s["top"][1]["probability"] for s in served)
    text = _predict([str(trained_run), str(files[0])])
    assert text.stdout.startswith(f"{files[0]}: {served[0]['label']} ")


def _odd_images(tmp_path: Path) -> dict:
    base = Image.new("RGB", (40, 30), (200, 40, 40))
    paths = {"gray": tmp_path / "gray.png", "rgba": tmp_path / "rgba.png", "cmyk": tmp_path / "cmyk.jpg",
             "palette": tmp_path / "palette.gif"}
    base.convert("L").save(paths["gray"])
    base.convert("RGBA").save(paths["rgba"])
    base.convert("CMYK").save(paths["cmyk"])
    base.convert("P").save(paths["palette"])
    return paths


def test_cli_handles_odd_and_bad_images_one_by_one(trained_run, tmp_path):
    odd = _odd_images(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    huge = tmp_path / "huge.png"
    Image.new("1", (9000, 6000)).save(huge)  # 54 Mpixel: refused, not decoded into memory
    result = _predict([str(trained_run), *map(str, odd.values()), str(tmp_path / "notes.txt"),
                       str(tmp_path / "empty.jpg"), str(huge), str(tmp_path / "missing.jpg"), "--json"])
    assert result.returncode == 1
    rows = {Path(row["image"]).name: row for row in map(json.loads, result.stdout.splitlines())}
    for name in ("gray.png", "rgba.png", "cmyk.jpg", "palette.gif"):
        assert "label" in rows[name], rows[name]
    assert "is not a readable image" in rows["notes.txt"]["error"]
    assert rows["empty.jpg"]["error"].endswith("is empty")
    assert "pixels" in rows["huge.png"]["error"]
    assert rows["missing.jpg"]["error"].endswith("does not exist")


def test_cli_refuses_a_missing_run_and_a_checkpoint_that_does_not_match(trained_run, tmp_path):
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)
    result = _predict([str(tmp_path / "nowhere"), str(image)])
    assert result.returncode == 2 and "is neither a run directory nor a checkpoint file" in result.stderr
    mismatched = tmp_path / "mismatched"
    shutil.copytree(trained_run, mismatched)
    config = mismatched / "resolved_config.yaml"
    config.write_text(config.read_text().replace("name: resnet18", "name: mobilenet_v2"))
    result = _predict([str(mismatched), str(image)])
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "does not match the run's config (mobilenet_v2, 10 classes)" in line


def test_serve_without_gradio_says_how_to_install_it(trained_run, tmp_path):
    (tmp_path / "gradio.py").write_text("raise ImportError('no gradio here')\n")
    result = run_cli([str(trained_run)], tmp_path, timeout=60, env={"PYTHONPATH": str(tmp_path)},
                     module="hpcbench.serve.app")
    assert result.returncode == 2
    assert result.stderr.strip() == "hpcbench-serve: error: gradio is not installed; pip install 'hpcbench[serve]'"


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    port = free_port()
    folder = tmp_path_factory.mktemp("gradio")
    env = {"GRADIO_TEMP_DIR": str(folder), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    process = start_cli([str(trained_run), "--port", str(port)], folder, env=env, module="hpcbench.serve.app")
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"hpcbench-serve did not come up: {' '.join(process.communicate(timeout=30))}")
        time.sleep(0.5)
    yield url
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def test_the_page_shows_the_top3_of_an_uploaded_image_in_a_real_browser(server, trained_run, cifar_root):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    image = sorted((cifar_root / "test" / "cat").iterdir())[0]
    expected = json.loads(_predict([str(trained_run), str(image), "--json"]).stdout)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(server)
        page.wait_for_selector("input[type=file]", state="attached", timeout=30_000)
        assert "resnet18" in page.content() and "test accuracy" in page.content()  # which run and checkpoint
        page.set_input_files("input[type=file]", str(image))
        page.wait_for_selector('[data-testid="image"] img[src*="/gradio_api/file="]', timeout=30_000)
        page.get_by_role("button", name="Submit").click()
        page.wait_for_selector('[data-testid="label-output-value"]', timeout=30_000)
        rows = page.locator('[data-testid$="-confidence-set"]')
        rows.first.wait_for(timeout=30_000)
        names = [rows.nth(i).locator("dt").inner_text().strip() for i in range(rows.count())]
        top = page.locator('[data-testid="label-output-value"]').inner_text().strip()
        verdict = page.locator("textarea").last.input_value()
        page.screenshot(path=str(ARTIFACTS / "serve_page.png"), full_page=True)
        browser.close()
    assert names == [row["class"] for row in expected["top"]]
    assert top == expected["label"]
    assert verdict.startswith("uncertain" if expected["uncertain"] else "confident")


def test_bad_uploads_through_the_api_get_clear_errors_and_the_server_stays_up(server, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(server, verbose=False)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    for bad in (handle_file(str(text)), None):
        with pytest.raises(AppError) as error:
            client.predict(bad, api_name="/predict")
        assert str(error.value)
    odd = _odd_images(tmp_path)
    for path in odd.values():  # and the server still answers, whatever the image mode
        label, verdict = client.predict(handle_file(str(path)), api_name="/predict")
        assert len(label["confidences"]) == 3 and verdict.split(":")[0] in ("uncertain", "confident")
