"""Files others read: atomic writes with the permissions the umask gives."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
from helpers import TINY, cli_env, run_dirs

from hpcbench.files import atomic_write_bytes, atomic_write_text, current_umask


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("umask", "expected"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        atomic_write_text(tmp_path / "a.txt", "x")
        previous = tmp_path / "a.prev"
        atomic_write_bytes(tmp_path / "a.txt", b"y", keep_previous=previous)
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").read_bytes() == b"y" and previous.read_text() == "x"
    assert _mode(tmp_path / "a.txt") == expected and _mode(previous) == expected
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


@pytest.mark.slow
def test_a_run_directory_and_its_report_are_readable_by_the_group_and_others(tmp_path):
    env = cli_env(tmp_path)
    command = f"umask 022 && exec {sys.executable} -m hpcbench.train " + " ".join([*TINY, "train.epochs=1"])
    result = subprocess.run(["sh", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    [run_dir] = run_dirs(tmp_path / "outputs")
    report = tmp_path / "report"
    command = f"umask 022 && exec {sys.executable} -m hpcbench.report.cli {run_dir} --out {report}"
    assert subprocess.run(["sh", "-c", command], capture_output=True, timeout=300).returncode == 0
    files = [p for p in [*run_dir.rglob("*"), *report.rglob("*")] if p.is_file()]
    assert {p.name for p in files} >= {"summary.json", "metrics.jsonl", "env.json", "resolved_config.yaml", "best.pt",
                                        "report.md", "runs.csv"}
    assert {oct(_mode(p)) for p in files} == {oct(0o644)}, {p.name: oct(_mode(p)) for p in files}
