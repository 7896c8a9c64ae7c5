"""A plain, non-editable install runs: the wheel built from this tree ships Hydra's config groups,
and an environment that has it (and not the source tree) trains, reports and finds the Slurm
launcher from another directory."""
from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import REPO, TINY, read_json

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A new virtual environment holding hpcbench's wheel; its dependencies come from this one's
    site-packages by a .pth line (nothing is downloaded), whose own .pth files, the editable
    install's path to the source tree among them, are not read there."""
    root = tmp_path_factory.mktemp("install")
    wheels = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(wheels), str(REPO)], check=True, timeout=300, cwd=root)
    [wheel] = wheels.glob("hpcbench-*.whl")
    venv = root / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, timeout=300, cwd=root)
    return venv / "bin"


def _run(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(cwd), "HPCBENCH_OUTPUT_DIR": str(cwd / "outputs")}
    return subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_wheel_ships_the_configs_and_runs_away_from_the_source_tree(installed, tmp_path):
    where = _run(installed, "python", "-c", "import hpcbench, sys; print(hpcbench.__file__); print(*sys.path, sep='\\n')",
                 cwd=tmp_path)
    package, *path = where.stdout.splitlines()
    assert package.startswith(str(installed.parent)) and str(REPO) not in path, where.stdout

    run_dir = tmp_path / "run"
    train = _run(installed, "hpcbench-train", *TINY, "train.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    assert read_json(run_dir / "summary.json")["status"] == "completed"

    report = _run(installed, "hpcbench-report", str(run_dir), "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "report" / "report.md").is_file()

    # Hydra finds the launcher plugin of the installed package, and the launcher composes a job.
    dry = _run(installed, "hpcbench-train", "-m", "hydra/launcher=slurm", "hydra.launcher.dry_run=true",
               "hardware=param_utkarsh", f"hardware.python={installed / 'python'}", "mode=cpu,ddp", "mode.device=cpu",
               cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "#SBATCH" in dry.stdout + dry.stderr
