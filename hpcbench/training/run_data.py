"""The data of one run, on every rank: the pipeline the ranks agreed on (or the one a resumed run
began with), built, and the ranks met before their first collective."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from hpcbench.config import RunConfig
from hpcbench.data.choice import decide_pipeline
from hpcbench.data.pipeline import build_pipeline, open_sources
from hpcbench.data.sampling import MIN_TRAIN_BATCH, DataPipeline
from hpcbench.errors import ConfigError
from hpcbench.mpi.process_group import gather_over_store
from hpcbench.mpi.topology import Topology


def check_every_rank_trains(pipeline: DataPipeline, cfg: RunConfig, topology: Topology) -> None:
    """A configuration that gives a rank no training step is refused, not run as an empty epoch."""
    if len(pipeline.train_loader) == 0:
        shard = pipeline.num_train if not topology.distributed else -(-pipeline.num_train // topology.world_size)
        raise ConfigError(
            f"data.limit_train={cfg.data.limit_train or pipeline.num_train} gives each of the {topology.world_size} "
            f"rank(s) {shard} training image(s) per epoch: no batch of at least {MIN_TRAIN_BATCH} (BatchNorm needs "
            f"{MIN_TRAIN_BATCH}); use at least {MIN_TRAIN_BATCH * topology.world_size} training images"
        )


def build_run_pipeline(cfg: RunConfig, device: torch.device, topology: Topology,
                       checkpoint: Optional[Dict[str, Any]]) -> DataPipeline:
    """This rank's pipeline: the one every rank agreed on, or the one the run began with when it
    resumes (data/choice.py); returns once every rank has built its own, and refuses a
    configuration that leaves a rank without a training step."""
    # Ranks take different times to open and build their data (a file system others share, rank 0
    # writing the decode cache): they agree and meet in rank 0's store, which waits long and sees a
    # rank die, not in a collective, which times out after mode.collective_timeout_s.
    train, test = open_sources(cfg.data)
    decision = decide_pipeline(cfg, train, test, device, lambda judged: gather_over_store(topology, "data-judged", judged),
                               recorded=checkpoint.get("pipeline") if checkpoint else None)
    pipeline = build_pipeline(cfg, topology.rank, topology.world_size, device, decision, (train, test))
    gather_over_store(topology, "data-built")
    check_every_rank_trains(pipeline, cfg, topology)
    return pipeline
