"""Files others read: atomic writes with the permissions the umask gives."""
from __future__ import annotations

import os
import stat

import pytest
from helpers import TINY, run_cli, run_dirs

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
    result = run_cli([*TINY, "train.epochs=1"], tmp_path, umask=0o022)  # as after a shell's `umask 022`
    assert result.returncode == 0, result.stderr
    [run_dir] = run_dirs(tmp_path / "outputs")
    report = tmp_path / "report"
    result = run_cli([str(run_dir), "--out", str(report)], tmp_path, module="hpcbench.report.cli", umask=0o022)
    assert result.returncode == 0, result.stderr
    files = [p for p in [*run_dir.rglob("*"), *report.rglob("*")] if p.is_file()]
    assert {p.name for p in files} >= {"summary.json", "metrics.jsonl", "env.json", "resolved_config.yaml", "best.pt",
                                        "report.md", "runs.csv"}
    assert {oct(_mode(p)) for p in files} == {oct(0o644)}, {p.name: oct(_mode(p)) for p in files}
