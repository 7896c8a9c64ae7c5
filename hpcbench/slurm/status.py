"""hpcbench-status SWEEP_DIR: the state of every job of a sweep submitted with
hydra/launcher=slurm (also with hydra.launcher.wait=false), from its manifest and Slurm.

Exit status: 0 when no job failed, 1 when one did (or the manifest is missing).
"""
from __future__ import annotations

import argparse
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

from hpcbench.cli import fail
from hpcbench.errors import HpcbenchError
from hpcbench.rundir import read_summary
from hpcbench.slurm.manifest import Manifest
from hpcbench.slurm.monitor import category, packed_run_state


def _query(command: List[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def slurm_states(job_ids: List[str]) -> Dict[str, str]:
    """Job id -> state, from accounting (sacct), else from the queue (squeue)."""
    ids = ",".join(job_ids)
    states = {}
    for line in _query(["sacct", "-n", "-P", "-X", "-j", ids, "--format=JobID,State"]).splitlines():
        job_id, _, state = line.partition("|")
        states[job_id] = state.split()[0] if state else "UNKNOWN"
    missing = [j for j in job_ids if j not in states]
    if missing:
        for line in _query(["squeue", "-h", "-j", ",".join(missing), "-o", "%i|%T"]).splitlines():
            job_id, _, state = line.partition("|")
            states[job_id] = state
    return states


def pending_reasons(job_ids: List[str]) -> Dict[str, str]:
    """Why Slurm keeps jobs waiting (squeue's reason: Resources, Priority, ReqNodeNotAvail, ...)."""
    reasons = {}
    for line in _query(["squeue", "-h", "-t", "PENDING", "-j", ",".join(job_ids), "-o", "%i|%r"]).splitlines():
        job_id, _, reason = line.partition("|")
        reasons[job_id] = reason
    return reasons


def _run_summary(run_dir: str) -> Optional[dict]:
    try:
        return read_summary(Path(run_dir))
    except (OSError, ValueError):
        return None


def _run_progress(summary: Optional[dict]) -> str:
    if summary is None:
        return "summary.json unreadable"
    if not summary:
        return "not started"
    return f"{summary.get('status')} {summary.get('epochs', 0)}/{summary.get('epochs_planned', '?')} epochs"


def show(sweep_dir: Path) -> bool:
    """Print the table; True when no job failed. Records the states in the manifest."""
    manifest = Manifest.read(sweep_dir)
    ids = list(dict.fromkeys(job.slurm_job_id for job in manifest.jobs))  # packed runs share their job's id
    states, reasons = slurm_states(ids), pending_reasons(ids)
    rows = [("job", "slurm id", "state", "run", "overrides")]
    for job in manifest.jobs:
        summary = _run_summary(job.run_dir)
        job.state = states.get(job.slurm_job_id, job.state)
        slurm_id = job.slurm_job_id
        if job.slot is not None:  # packed: the Slurm job is its allocation's, the run's state its own
            job.state = packed_run_state(job.state, (summary or {}).get("status"))
            slurm_id += f" slot {job.slot}"
        state = f"{job.state} ({reasons[job.slurm_job_id]})" if job.slurm_job_id in reasons else job.state
        rows.append((f"#{job.num}", slurm_id, state, _run_progress(summary), " ".join(job.overrides)))
    manifest.write()
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4])
    return not any(category(job.state) == "failed" for job in manifest.jobs)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="hpcbench-status", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        ok = show(args.sweep_dir)
    except HpcbenchError as error:
        fail("hpcbench-status", str(error))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
