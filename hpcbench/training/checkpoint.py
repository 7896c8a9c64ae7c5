"""Checkpoints: what they hold, which one a resumed run continues from, and safe loading.

`checkpoints/last.pt` is written after every epoch (atomically; the one before it is kept as
`last.prev.pt`, so a kill during a write never leaves only a broken file). It holds the model,
the optimizer (and fp16's GradScaler), the epoch, the metrics so far, the restarts and the data
pipeline that fed the run (data.pipeline=auto decides once: data/choice.py). No RNG
state: every epoch seeds its RNGs and sampler from (seed, epoch, rank) alone, so resuming after
epoch N trains epoch N + 1 exactly as an uninterrupted run would, and a run interrupted mid-epoch
repeats that epoch from its start. `best.pt` holds the weights, classes and config of the best
epoch: what serving needs.

Every load uses `torch.load(weights_only=True)`: a checkpoint carrying a pickled payload is
refused without running it.
"""
from __future__ import annotations

import logging
import pickle
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn

from hpcbench.config import RunConfig
from hpcbench.models import unwrap
from hpcbench.mpi.topology import Topology
from hpcbench.rundir import LAST, PREVIOUS, EpochMetrics
from hpcbench.training.continuation import CheckpointError, check_compatible, config_dict

log = logging.getLogger("hpcbench")



def weights_state(model: nn.Module, epoch: int, test_acc: float, classes: List[str], cfg: RunConfig) -> Dict[str, Any]:
    """best.pt: what serving and evaluation need."""
    return {"model": unwrap(model).state_dict(), "epoch": epoch, "test_acc": test_acc, "classes": classes,
            "config": config_dict(cfg)}


def resumable_state(weights: Dict[str, Any], optimizer: torch.optim.Optimizer,
                    scaler: Optional[torch.amp.GradScaler], history: List[EpochMetrics], elapsed_s: float,
                    restarts: int, resumed_from_epochs: List[int], energy_j: Optional[float],
                    pipeline: Optional[str]) -> Dict[str, Any]:
    """last.pt: the weights plus everything the next epoch depends on, and the run's account so far."""
    return {**weights, "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None,
            "history": [asdict(m) for m in history], "elapsed_s": elapsed_s, "restarts": restarts,
            "resumed_from_epochs": resumed_from_epochs, "energy_j": energy_j, "pipeline": pipeline}


def safe_load(path: Path) -> Dict[str, Any]:
    """Load tensors and plain data only; anything else (code in a pickle) is refused."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else "refused"
        raise CheckpointError(f"{path} is not a plain checkpoint and was not loaded (weights_only): {first}") from None
    except (OSError, RuntimeError, EOFError, ValueError) as error:
        raise CheckpointError(f"{path} is truncated or corrupt: {error}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a checkpoint dictionary")
    return state



def find_resume_checkpoint(checkpoint_dir: Path, cfg: RunConfig) -> Optional[Dict[str, Any]]:
    """The newest loadable of last.pt / last.prev.pt, checked against `cfg`; None when there is
    none. Never silently starts over: if checkpoints exist but none loads, that is an error."""
    candidates = [checkpoint_dir / f"{name}.pt" for name in (LAST, PREVIOUS)]
    existing = [path for path in candidates if path.is_file()]
    problems: List[str] = []
    for path in existing:
        try:
            state = safe_load(path)
        except CheckpointError as error:
            problems.append(str(error))
            log.warning("%s; trying the previous checkpoint", error)
            continue
        if "optimizer" not in state or "config" not in state:
            problems.append(f"{path} is not a resumable checkpoint")
            continue
        check_compatible(path, state["config"], cfg)
        if problems:
            log.warning("resuming from %s instead (%s)", path.name, problems[0])
        return state
    if existing:
        raise CheckpointError(
            f"cannot resume: {'; '.join(problems)}; move {checkpoint_dir} away or set train.resume=false to start over"
        )
    return None


def agreed_resume_checkpoint(checkpoint_dir: Path, cfg: RunConfig, topology: Topology) -> Optional[Dict[str, Any]]:
    """Rank 0 picks the checkpoint (last or previous); every rank loads that same epoch's file."""
    found, choice = None, None
    if topology.is_main:
        found = find_resume_checkpoint(checkpoint_dir, cfg)
        choice = found["epoch"] if found is not None else None
    if topology.distributed:
        box = [choice]
        dist.broadcast_object_list(box, src=0)
        choice = box[0]
    if choice is None or found is not None:
        return found
    for name in (LAST, PREVIOUS):
        path = checkpoint_dir / f"{name}.pt"
        if path.is_file():
            try:
                state = safe_load(path)
            except CheckpointError:
                continue
            if state.get("epoch") == choice:
                return state
    raise CheckpointError(f"rank {topology.rank} cannot read the checkpoint of epoch {choice} in {checkpoint_dir}")


def restore_training_state(checkpoint: Dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                           scaler: Optional[torch.amp.GradScaler]) -> None:
    unwrap(model).load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    if scaler is not None and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
