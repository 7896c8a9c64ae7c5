"""One rank of a DDP run inside an MPI world: its topology, the process group, the run, and what
it says when it stops with an error (rank 0 speaks for all; the others stay quiet)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist

from hpcbench.config import RunConfig, collective_timeout
from hpcbench.errors import ConfigError, DeviceError, HpcbenchError
from hpcbench.failure_records import clear_failures
from hpcbench.mpi.failures import one_line, record_failure, record_on_lost_contact
from hpcbench.mpi.lost_contact import stop_listening
from hpcbench.mpi.process_group import init_process_group, resolve_backend, shutdown
from hpcbench.mpi.topology import Topology, allgather, check_implementation, exit_without_mpi_finalize, mpi_topology
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
    try:
        check_implementation(cfg.hardware.mpi)  # every rank alike
        device = agreed_device(cfg, topology)  # NCCL wants the GPU chosen before the group starts
    except (ConfigError, DeviceError) as error:
        record_failure(out_dir, topology.rank, topology.host, error)
        raise RankFailed(str(error), quiet=not topology.is_main, exit_code=error.exit_code) from error
    store = init_process_group(topology, resolve_backend(cfg.mode.backend, cfg.mode.device),
                               collective_timeout(cfg), device, cfg.hardware.network_variables())
    topology = replace(topology, store_address=store)
    if topology.is_main:  # an earlier attempt's failure records would be read as this one's
        clear_failures(out_dir)
    record_on_lost_contact(out_dir, topology)
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
        stop_listening()
        shutdown()
    return summary if topology.is_main else None


def agreed_device(cfg: RunConfig, topology: Topology) -> torch.device:
    """Every rank's device, chosen and checked before the process group starts, and the outcome
    agreed over MPI: a rank that cannot use its GPU (none bound to it, a torch build without its
    kernels) stops every rank at once with its one line, where otherwise the others would wait for
    it in the process group's start-up until the job's time limit."""
    try:
        device, problem = select_device(cfg.mode.device, topology, cfg.mode.name), ""
    except Exception as error:  # any: CUDA's own (a GPU busy in exclusive mode) as well as hpcbench's
        reason = str(error) if isinstance(error, DeviceError) else one_line(error)
        device, problem = None, f"rank {topology.rank} on {topology.host}: {reason}"
    problems = [line for line in allgather(problem) if line]
    if problems:
        raise DeviceError(problems[0])
    assert device is not None
    return device
