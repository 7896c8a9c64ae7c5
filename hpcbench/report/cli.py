"""hpcbench-report: tables, plots and report.md from run or sweep directories.

    hpcbench-report outputs/sweeps/2026-11-27_... --out reports/quickstart
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

from hpcbench.cli import fail
from hpcbench.errors import HpcbenchError
from hpcbench.report.read import start_reading


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpcbench-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run or sweep directories (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="directory to write report.md, CSVs and PNGs to")
    parser.add_argument("--baseline", choices=["auto", "cpu", "single"], default="auto",
                        help="speedup baseline: serial CPU if present (auto), serial CPU, or single device")
    parser.add_argument("--tolerance", type=float, default=0.01,
                        help="accuracy parity: smallest difference that matters (0.01 = 1 point)")
    parser.add_argument("--target", type=float, default=None,
                        help="time to accuracy: the target (default: the baseline's best minus the tolerance)")
    parser.add_argument("--title", default="hpcbench report")
    parser.add_argument("--mlflow", metavar="URI", default=None,
                        help="also log the runs (children of their sweep's run) and this report to MLflow at URI")
    parser.add_argument("--mlflow-experiment", metavar="NAME", default=None,
                        help="MLflow experiment (default: the runs' tracking.experiment, else experiment_name)")
    return parser


def write_report(paths: List[Path], out: Path, baseline: str = "auto", tolerance: float = 0.01,
                 title: str = "hpcbench report", target: Optional[float] = None) -> Path:
    found, reading = start_reading(paths)  # a large study's readers start on the other cores now
    # ... while this process imports the libraries of the tables, statistics and plots (pandas,
    # scipy.special, matplotlib: 1.5-2 s here, as long as reading 1,000 runs), overlapped.
    from hpcbench.report.assemble import assemble
    from hpcbench.report.collect import collection

    return assemble(collection(found, reading(), paths), paths, out, baseline, tolerance, title, target)


def main(argv: Optional[List[str]] = None) -> None:
    args = _parser().parse_args(argv)
    try:
        report = write_report(args.paths, args.out, args.baseline, args.tolerance, args.title, args.target)
        print(report)
        if args.mlflow:
            from hpcbench.tracking.upload import upload  # mlflow is an extra: imported only when asked

            print(upload(args.paths, args.out, args.mlflow, args.mlflow_experiment))
    except HpcbenchError as error:
        fail("hpcbench-report", str(error))


if __name__ == "__main__":
    main()
