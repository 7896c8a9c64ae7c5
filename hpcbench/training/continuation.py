"""Can this run directory be continued by this configuration? The keys that fix a training
trajectory, the check that a checkpoint or a completed run came from the same ones, and the look
at a run directory before anything is written there. Free of torch, so the process that starts
the DDP ranks (or a sweep's launcher) checks in a fraction of a second before starting them."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import OmegaConf

from hpcbench.config import RunConfig
from hpcbench.data.shards import read_manifest_digest
from hpcbench.errors import HpcbenchError
from hpcbench.rundir import CHECKPOINTS, LAST, PREVIOUS, RESOLVED_CONFIG, RunSummary, read_summary

# Config groups and keys that must match for a checkpoint to continue a run.
TRAJECTORY_KEYS = ("model", "data", "batch_size", "train", "mode.ranks", "mode.device")
# data.pipeline: auto resolves once and the run keeps what it resolved to (checked below and in
# data/choice.py); data.memory_budget_mb only tells auto what fits.
NOT_TRAJECTORY = ("data.num_workers", "data.root", "data.download", "data.pipeline", "data.memory_budget_mb",
                  "train.epochs", "train.resume", "train.save_checkpoints", "train.keep_checkpoints", "train.probe")


class CheckpointError(HpcbenchError):
    """A checkpoint is unreadable, unsafe, or from another configuration."""


def config_dict(cfg: RunConfig) -> Dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[return-value]



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
    saved, current = trajectory(saved_config), trajectory(config_dict(cfg))
    differences = [f"{k}: {saved.get(k)!r} there, {current.get(k)!r} now" for k in sorted(set(saved) | set(current))
                   if saved.get(k) != current.get(k)]
    if differences:
        raise CheckpointError(
            f"{path} was written by a different configuration ({'; '.join(differences[:3])}); "
            f"use a new run directory, or train.resume=false to start this one over"
        )


def check_run_directory(cfg: RunConfig, out_dir: Path) -> Optional[RunSummary]:
    """Look at `out_dir` before anything is written there. Returns the summary of a run that
    completed there before (it is not trained again); refuses a directory whose checkpoints or
    completed run come from another configuration, and a completed run that cannot be extended
    to more epochs because it kept only its best weights."""
    if not cfg.train.resume:
        return None
    out_dir = Path(out_dir)
    summary = read_summary(out_dir)
    completed = summary.get("status") == "completed"
    checkpoints = [out_dir / CHECKPOINTS / f"{name}.pt" for name in (LAST, PREVIOUS)]
    if (completed or any(p.is_file() for p in checkpoints)) and (out_dir / RESOLVED_CONFIG).is_file():
        earlier = OmegaConf.to_container(OmegaConf.load(out_dir / RESOLVED_CONFIG))
        check_compatible(out_dir / RESOLVED_CONFIG, earlier, cfg)  # type: ignore[arg-type]
    _check_same_shard_set(cfg, out_dir, summary)
    _check_same_pipeline(cfg, out_dir, summary)
    if not completed:
        return None
    if summary.get("epochs") == cfg.train.epochs:
        return RunSummary(**summary)
    if not checkpoints[0].is_file():
        raise CheckpointError(
            f"{out_dir} completed {summary.get('epochs')} epochs and kept only its best weights "
            f"(train.keep_checkpoints={cfg.train.keep_checkpoints}), so it cannot be extended to "
            f"train.epochs={cfg.train.epochs}; use a new run directory (keep_checkpoints=resumable keeps runs extendable)"
        )
    return None


def _check_same_shard_set(cfg: RunConfig, out_dir: Path, summary: Dict[str, Any]) -> None:
    """data.root may move (it is not part of the trajectory), but the images it holds may not change."""
    earlier = summary.get("data_digest")
    if cfg.data.name != "shards" or not earlier:
        return
    now = read_manifest_digest(Path(cfg.data.root or ""))
    if now != earlier:
        raise CheckpointError(
            f"{out_dir} was trained on the shard set with digest {earlier}, but data.root={cfg.data.root} holds "
            f"{'digest ' + now if now else 'no shard set'}; point data.root at the same shard set, or use a new run directory"
        )


def _check_same_pipeline(cfg: RunConfig, out_dir: Path, summary: Dict[str, Any]) -> None:
    """Pipelines differ in the order they feed images: a run continues with the one it began with
    (data.pipeline=auto keeps it; another one by name is refused)."""
    began = summary.get("pipeline")
    if began and cfg.data.pipeline not in ("auto", began) and summary.get("epochs"):
        raise CheckpointError(
            f"{out_dir} was fed by the {began} pipeline and cannot continue with data.pipeline={cfg.data.pipeline} "
            f"(another order of images); continue it with data.pipeline=auto or {began}, or use a new run directory"
        )
