"""Checkpoints: safe loading, resume state, and the checks that keep a resume honest.

`checkpoints/last.pt` is written after every epoch (atomically; the one before it is kept as
`last.prev.pt`, so a kill during a write never leaves only a broken file). It holds the model,
the optimizer, the epoch, the metrics so far, the restarts and every rank's RNG states. Each epoch
reseeds its RNGs from (seed, epoch, rank) and re-seeds the sampler, so resuming after epoch N
trains epoch N + 1 exactly as an uninterrupted run would: a run interrupted mid-epoch repeats that
epoch from its start.

Every load uses `torch.load(weights_only=True)`: a checkpoint carrying a pickled payload is
refused without running it.
"""
from __future__ import annotations

import logging
import pickle
import random
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from hpcbench.config import RunConfig
from hpcbench.errors import HpcbenchError

log = logging.getLogger("hpcbench")

LAST, PREVIOUS, BEST = "last", "last.prev", "best"
# Config groups and keys that must match for a checkpoint to continue a run.
TRAJECTORY_KEYS = ("model", "data", "batch_size", "train", "mode.ranks", "mode.device")
NOT_TRAJECTORY = ("data.num_workers", "data.root", "data.download", "train.epochs", "train.resume",
                  "train.save_checkpoints")


class CheckpointError(HpcbenchError):
    """A checkpoint is unreadable, unsafe, or from another configuration."""


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


def _flatten(config: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def trajectory(config: Dict[str, Any]) -> Dict[str, Any]:
    """The keys of a config that determine the training trajectory."""
    flat = _flatten(config)
    return {k: v for k, v in flat.items()
            if k.startswith(TRAJECTORY_KEYS) and not k.startswith(NOT_TRAJECTORY)}


def check_compatible(path: Path, saved_config: Dict[str, Any], cfg: RunConfig) -> None:
    saved, current = trajectory(saved_config), trajectory(OmegaConf.to_container(OmegaConf.structured(cfg)))
    differences = [f"{k}: {saved.get(k)!r} there, {current.get(k)!r} now" for k in sorted(set(saved) | set(current))
                   if saved.get(k) != current.get(k)]
    if differences:
        raise CheckpointError(
            f"{path} was written by a different configuration ({'; '.join(differences[:3])}); "
            f"use a new run directory, or train.resume=false to start this one over"
        )


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


def rng_state() -> Dict[str, Any]:
    """This process's RNG states as plain lists: they travel through all_gather_object and load
    with weights_only."""
    version, python_state, gauss = random.getstate()
    numpy_state = np.random.get_state()
    return {
        "python": [version, list(python_state), gauss],
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: Dict[str, Any]) -> None:
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
