"""One rank of a DDP run inside an MPI world: its topology, the process group, the run, and what
it says when it stops with an error (rank 0 speaks for all; the others stay quiet)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import torch.distributed as dist

from hpcbench.config import RunConfig
from hpcbench.errors import ConfigError, HpcbenchError
from hpcbench.mpi.failures import clear_failures
from hpcbench.mpi.process_group import init_process_group, resolve_backend, shutdown
from hpcbench.mpi.topology import exit_without_mpi_finalize, mpi_topology
from hpcbench.rundir import RunSummary, read_summary
from hpcbench.training.device import select_device
from hpcbench.training.signals import Interrupted
from hpcbench.training.trainer import Diverged, fit


class RankFailed(HpcbenchError):
    """A rank of a DDP run stopped with an error. Rank 0 says why in one line (for a failure: the
    rank that failed first); the others stay quiet, their tracebacks are in the run directory's
    ranks/ folder."""

    def __init__(self, message: str, quiet: bool, exit_code: int):
        super().__init__(message)
        self.quiet, self.exit_code = quiet, exit_code


def train_rank(cfg: RunConfig, out_dir: Path,
               configure_logging: Optional[Callable[[bool], None]] = None) -> Optional[RunSummary]:
    """One rank of a DDP run inside an MPI world. Returns the summary on rank 0, None elsewhere."""
    topology = mpi_topology(cfg.mode.ranks)
    if configure_logging is not None:
        configure_logging(topology.is_main)
    select_device(cfg.mode.device, topology, cfg.mode.name)  # NCCL wants the GPU chosen before the group starts
    store = init_process_group(topology, resolve_backend(cfg.mode.backend, cfg.mode.device), cfg.mode.collective_timeout_s)
    topology = replace(topology, store_address=store)
    if topology.is_main:  # an earlier attempt's failure records would be read as this one's
        clear_failures(out_dir)
    dist.barrier()
    try:
        summary = fit(cfg, out_dir, topology)
    except Exception as error:
        alike = isinstance(error, (Interrupted, ConfigError, Diverged))  # every rank stops with the same error
        line = str(error) if alike else (read_summary(out_dir).get("error") if topology.is_main else "") or str(error)
        exit_code = getattr(error, "exit_code", 1)
        if not alike:  # a peer may be gone
            exit_without_mpi_finalize(exit_code)
        raise RankFailed(line, quiet=not topology.is_main, exit_code=exit_code) from error
    finally:
        shutdown()
    return summary if topology.is_main else None
