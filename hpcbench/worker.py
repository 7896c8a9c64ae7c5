"""One MPI rank of a DDP run: `python -m hpcbench.worker RUN_DIR` (started by mpi/launch.py).
Reads RUN_DIR/resolved_config.yaml; rank 0 writes RUN_DIR. A failing rank exits without a word:
the process that launched the ranks reports the rank that failed first, in one line, and the
tracebacks are in RUN_DIR/ranks/."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from hpcbench.cli import fail, one_line_errors
from hpcbench.rundir import read_resolved_config
from hpcbench.training.rank import RankFailed, train_rank

PROGRAM = "hpcbench.worker"


def _configure_logging(run_dir: Path, is_main: bool) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if is_main:
        handlers.append(logging.FileHandler(run_dir / "train.log"))
    logging.basicConfig(
        level=logging.INFO if is_main else logging.WARNING,
        format="[%(asctime)s][%(levelname)s] %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        handlers=handlers,
    )


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        fail(PROGRAM, "usage: python -m hpcbench.worker RUN_DIR", 2)
    run_dir = Path(args[0])
    with one_line_errors(PROGRAM):
        run = read_resolved_config(run_dir)
        try:
            train_rank(run, run_dir, configure_logging=lambda is_main: _configure_logging(run_dir, is_main))
        except RankFailed as error:
            raise SystemExit(error.exit_code) from None


if __name__ == "__main__":
    main()
