"""Every job of a sweep planned before any is submitted: its own config (slurm/compose.py), the
request derived from it, a ConfigError naming the job where the hardware cannot hold it.

Planning must stay in seconds for a sweep of 1,000 jobs on a login node (`python -m
hpcbench.benchmark_planning`), and most of a job's time goes to OmegaConf: copying the shared
composition, resolving it, merging it into the typed schema (40 ms). A job whose overrides only
set values that nothing interpolates (`train.seed=7`, `train.lr=0.1`) takes a shortcut: its
composition's typed config, resolved and merged once, with those values merged in (8 ms). The
result is the one the whole way gives (tests/test_sweep_planning plans a grid both ways).
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.types import Override, OverrideType
from hydra.core.utils import filter_overrides
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from hpcbench.config import PartitionConfig, RunConfig, run_partition
from hpcbench.config_load import checked_run_config, merge_into_schema, to_run_config
from hpcbench.errors import ConfigError
from hpcbench.slurm.compose import Composition, SweepComposer
from hpcbench.slurm.resources import SlurmRequest, check_compute_environment, derive_request

JOB_NUM_SUBDIR = "${hydra.job.num}"  # Hydra's default hydra.sweep.subdir, and hpcbench's


@dataclass
class PlannedJob:
    num: int
    overrides: List[str]
    run_dir: Path
    request: SlurmRequest
    partition: Optional[PartitionConfig] = None  # where an hpcbench run goes (packing fits runs to its nodes)

    @property
    def label(self) -> str:
        return f"#{self.num} {' '.join(filter_overrides(self.overrides))}"


def is_hpcbench_config(job_config: DictConfig) -> bool:
    """A job of one of hpcbench's own apps: its config has every group of RunConfig."""
    return all(name in job_config for name in (f.name for f in fields(RunConfig)))


@dataclass
class _SharedPlan:
    """What the jobs of one composition share, for the shortcut."""

    usable: bool  # False: every job of it is planned the whole way
    sweep_dir: Path = Path()
    typed: Optional[bytes] = None  # pickled, merged into RunConfig's schema; None: not an hpcbench app
    raw: Any = None  # the composition as plain containers, interpolations unresolved
    interpolations: Tuple[str, ...] = ()  # every value of it that interpolates ("${" in it)


class SweepPlanner:
    def __init__(self, composer: SweepComposer, master: DictConfig, resources: Dict[str, Any]):
        self.composer, self.master, self.resources = composer, master, resources
        self._shared: Dict[Tuple[str, ...], _SharedPlan] = {}

    def plan(self, num: int, overrides: Sequence[str]) -> PlannedJob:
        try:
            return self._shortcut(num, overrides) or self._whole(num, overrides)
        except ConfigError as error:
            raise ConfigError(f"job #{num} ({' '.join(filter_overrides(overrides))}): {error}") from None

    def _whole(self, num: int, overrides: Sequence[str]) -> PlannedJob:
        """Compose the job's config, resolve it, derive its request: what its own run will see."""
        config = self.composer.load_sweep_config(self.master, list(overrides))
        with open_dict(config.hydra):
            config.hydra.job.num = num
        HydraConfig.instance().set_config(config)  # `${hydra:...}` resolves against this job, as in run_job
        run_dir = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
        job_config = OmegaConf.create({k: v for k, v in config.items() if k != "hydra"})
        if is_hpcbench_config(job_config):
            return PlannedJob(num, list(overrides), run_dir, *self._request(to_run_config(job_config)))
        return PlannedJob(num, list(overrides), run_dir, SlurmRequest().with_overrides(self.resources))

    def _shortcut(self, num: int, overrides: Sequence[str]) -> Optional[PlannedJob]:
        found = self.composer.composition(self.master, overrides)
        if found is None:
            return None
        composition, values = found
        shared = self._shared_plan(composition)
        changes = _value_changes(values, shared) if shared.usable else None
        if changes is None:
            return None
        run_dir = shared.sweep_dir / str(num)
        if shared.typed is None:
            return PlannedJob(num, list(overrides), run_dir, SlurmRequest().with_overrides(self.resources))
        try:
            merged = pickle.loads(shared.typed)  # a copy, as in Composition.copy()
            merged.merge_with(changes)
        except OmegaConfBaseException:
            return None  # a wrong type: the whole way reports it as Hydra does
        return PlannedJob(num, list(overrides), run_dir, *self._request(checked_run_config(merged)))

    def _request(self, run: RunConfig) -> Tuple[SlurmRequest, PartitionConfig]:
        request = derive_request(run).with_overrides(self.resources)
        check_compute_environment(run, request)
        return request, run_partition(run)[1]

    def _shared_plan(self, composition: Composition) -> _SharedPlan:
        if composition.key in self._shared:
            return self._shared[composition.key]
        config = composition.copy()  # set_config below makes its hydra node read-only
        raw = OmegaConf.to_container(config, resolve=False)
        assert isinstance(raw, dict)
        sweep = raw["hydra"]["sweep"]
        app_interpolations = _interpolations({k: v for k, v in raw.items() if k != "hydra"})
        shared = _SharedPlan(usable=False)
        # The shortcut resolves the composition once, not each job: only where neither the job's
        # directory nor a value of the app depends on the job's number or its overrides.
        if sweep["subdir"] == JOB_NUM_SUBDIR and "job" not in str(sweep["dir"]) \
                and not any("hydra" in text for text in app_interpolations):
            HydraConfig.instance().set_config(config)
            try:
                app = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                       for k, v in config.items() if k != "hydra"}
                typed = pickle.dumps(merge_into_schema(app), protocol=pickle.HIGHEST_PROTOCOL) \
                    if is_hpcbench_config(config) else None
                shared = _SharedPlan(True, Path(str(config.hydra.sweep.dir)), typed, raw, tuple(_interpolations(raw)))
            except (ConfigError, OmegaConfBaseException):
                pass  # the composition alone is incomplete (a value the jobs set): its jobs go the whole way
        self._shared[composition.key] = shared
        return shared


def _value_changes(values: List[Override], shared: _SharedPlan) -> Optional[Dict[str, Any]]:
    """The job's value overrides as a nested dict to merge into the typed composition, or None
    where that could differ from composing the job (the value is interpolated elsewhere, it adds
    or deletes a key, it is not a plain scalar)."""
    changes: Dict[str, Any] = {}
    for override in values:
        value = override.value()
        if override.type is not OverrideType.CHANGE or override.is_hydra_override() or override.package is not None \
                or not isinstance(value, (bool, int, float, str)) or (isinstance(value, str) and "${" in value):
            return None
        path = override.key_or_group.split(".")
        if any(path[-1] in text for text in shared.interpolations) or not _is_leaf(shared.raw, path):
            return None
        node = changes
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return changes


def _is_leaf(raw: Any, path: List[str]) -> bool:
    for part in path:
        if not isinstance(raw, dict) or part not in raw:
            return False
        raw = raw[part]
    return not isinstance(raw, (dict, list))


def _interpolations(raw: Any) -> List[str]:
    if isinstance(raw, dict):
        return [text for value in raw.values() for text in _interpolations(value)]
    if isinstance(raw, list):
        return [text for value in raw for text in _interpolations(value)]
    return [raw] if isinstance(raw, str) and "${" in raw else []
