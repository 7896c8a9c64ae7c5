"""A composed config (Hydra's DictConfig) into the checked dataclasses of config.py: resolved,
merged into the typed schema (an unknown key or a wrong type raises), then the field declarations
and the rules that relate several keys (a ConfigError names the key)."""
from __future__ import annotations

import functools

from hpcbench.config import RunConfig
from hpcbench.config_fields import check_fields, require

# Hydra and OmegaConf are imported where they are used: the dataclasses alone need neither.


def register_schemas() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="run_schema", node=RunConfig)


def to_run_config(cfg) -> RunConfig:
    """Resolve a composed config (a DictConfig) into the typed dataclasses and check it."""
    from omegaconf import OmegaConf

    # Resolve to plain containers first: merging a plain dict into the schema rejects every key
    # the schema lacks, including ones added with Hydra's `+key=value`.
    return checked_run_config(merge_into_schema(OmegaConf.to_container(cfg, resolve=True)))


def merge_into_schema(*values):
    """`values` (plain containers, or one already merged) merged in order into RunConfig's typed
    schema (a DictConfig): an unknown key or a wrong type raises."""
    from omegaconf import OmegaConf

    return OmegaConf.merge(_schema(), *values)  # merge copies its first argument: the cached schema stays as built


@functools.lru_cache(maxsize=1)
def _schema():
    from omegaconf import OmegaConf

    return OmegaConf.structured(RunConfig)  # 14 ms to build; a sweep's planning merges into it once a job


def checked_run_config(merged) -> RunConfig:
    """The dataclasses of a config merged into the schema, checked."""
    from omegaconf import OmegaConf

    run: RunConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    validate(run)
    return run


def validate(run: RunConfig) -> None:
    """The field declarations, then the rules that relate several keys."""
    check_fields(run)
    require(not (run.model._target_ and run.model.pretrained),
             f"model.pretrained=true loads torchvision's ImageNet weights; for model._target_={run.model._target_} "
             f"load your own weights in that function and set model.pretrained=false")
    if run.mode.name != "ddp":
        require(run.mode.ranks == 1, f"mode.ranks={run.mode.ranks} needs mode=ddp (mode={run.mode.name} runs one process)")
    require(
        run.mode.ranks % run.mode.nodes == 0,
        f"mode.ranks={run.mode.ranks} is not divisible by mode.nodes={run.mode.nodes}",
    )
    if run.batch_size.scaling == "strong":
        require(
            run.batch_size.size % run.mode.ranks == 0,
            f"batch_size.size={run.batch_size.size} (global, strong scaling) is not divisible by mode.ranks={run.mode.ranks}",
        )
