"""Each distinct choice of config groups in a sweep composed once.

Hydra composes a job's config from its whole defaults tree, file by file (0.2 s here), and a
sweep composes every job twice: the sweeper checks each one (`validate_batch_is_legal`), then the
launcher plans it. A grid of 5 models x 4 batch sizes x 50 seeds is 20 defaults trees, not 1,000:
jobs that pick the same config groups share one composition here, and each job's value overrides
(`train.seed=7`) are applied to a copy of it the way Hydra applies them after composing
(`ConfigLoaderImpl._apply_overrides_to_config`), with the same bookkeeping (hydra.overrides,
override_dirname, env_set). Whatever could change the defaults tree (a config group choice, an
addition or deletion of one, `hydra.searchpath`, a dict value) is part of the shared key, or the
job is composed by Hydra whole: the result is the config Hydra composes (tests/test_sweep_planning).
"""
from __future__ import annotations

import os
import pickle
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.config_loader import ConfigLoader
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException


@dataclass
class Composition:
    """One composed defaults tree, shared by the jobs that pick the same config groups."""

    key: Tuple[str, ...]  # the structural overrides it was composed with
    config: DictConfig  # read it, never change it: copy() for a job of one's own
    _pickled: bytes = b""

    def copy(self) -> DictConfig:
        # A pickle round trip copies an OmegaConf tree in half the time of copy.deepcopy (flags,
        # types and parents included): this runs once for every job of the sweep.
        if not self._pickled:
            self._pickled = pickle.dumps(self.config, protocol=pickle.HIGHEST_PROTOCOL)
        return pickle.loads(self._pickled)


class SweepComposer:
    """Hydra's config loader with a cache of compositions, keyed by the config groups a job picks.
    Stands in for the loader of a sweep's HydraContext: the sweeper and the launcher share it."""

    def __init__(self, loader: ConfigLoader) -> None:
        self.loader = loader
        self._parser = OverridesParser.create()
        self._parsed: Dict[Tuple[str, ...], List[Override]] = {}
        self._compositions: Dict[Tuple[str, ...], Composition] = {}

    def __getattr__(self, name: str) -> Any:  # the rest of ConfigLoader's interface, unchanged
        return getattr(self.loader, name)

    @property
    def compositions(self) -> int:
        """How many defaults trees were composed (tests/test_sweep_planning reads it)."""
        return len(self._compositions)

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: List[str]) -> DictConfig:
        """What `ConfigLoaderImpl.load_sweep_config(master_config, sweep_overrides)` returns."""
        shared = self.composition(master_config, sweep_overrides)
        if shared is None:
            return self.loader.load_sweep_config(master_config, sweep_overrides)
        composition, values = shared
        config = composition.copy()
        try:
            ConfigLoaderImpl._apply_overrides_to_config(values, config)
        except OmegaConfBaseException as error:  # as ConfigLoaderImpl.load_configuration wraps it
            raise ConfigCompositionException().with_traceback(sys.exc_info()[2]) from error
        master = self._parse(OmegaConf.to_container(master_config.hydra.overrides.hydra))  # type: ignore[arg-type]
        _record_overrides(config, master, self._parse(composition.key), self._parse(sweep_overrides))
        OmegaConf.copy_cache(from_config=master_config, to_config=config)
        return config

    def composition(self, master_config: DictConfig, sweep_overrides: Sequence[str]
                    ) -> Optional[Tuple[Composition, List[Override]]]:
        """The shared composition of this job and its value overrides; None where Hydra must
        compose the job whole (see the module's doc)."""
        repository = getattr(self.loader, "repository", None)
        if repository is None:  # not Hydra's own loader: nothing is known of its groups
            return None
        structural, values = [], []
        for override in self._parse(sweep_overrides):
            if override.is_sweep_override() or isinstance(override.value(), dict) \
                    or override.get_key_element() == "hydra.searchpath":
                return None
            (structural if repository.group_exists(override.key_or_group) else values).append(override)
        key = tuple(o.input_line for o in structural)
        if key not in self._compositions:
            self._compositions[key] = Composition(key, self.loader.load_sweep_config(master_config, list(key)))
        return self._compositions[key], values

    def _parse(self, lines: Sequence[str]) -> List[Override]:
        key = tuple(lines)
        if key not in self._parsed:  # Hydra's override grammar takes a millisecond a line
            self._parsed[key] = self._parser.parse_overrides(list(key))
        return self._parsed[key]


def _record_overrides(config: DictConfig, master: List[Override], structural: List[Override],
                      sweep: List[Override]) -> None:
    """The bookkeeping of `ConfigLoaderImpl._load_configuration_impl` for the job's whole override
    list, where the shared composition recorded only the master's and the structural ones."""
    composed_with = master + structural
    for name, is_hydra in (("hydra", True), ("task", False)):
        recorded = OmegaConf.to_container(config.hydra.overrides[name], resolve=False)  # a line may hold ${...}
        assert isinstance(recorded, list)
        before = recorded[:len(recorded) - sum(o.is_hydra_override() == is_hydra for o in composed_with)]
        config.hydra.overrides[name] = before + [o.input_line for o in master + sweep if o.is_hydra_override() == is_hydra]
    with open_dict(config.hydra):
        for key in config.hydra.job.env_copy:
            config.hydra.job.env_set[key] = os.environ[key]
    dirname = config.hydra.job.config.override_dirname
    config.hydra.job.override_dirname = get_overrides_dirname(
        overrides=[o for o in master + sweep if not o.is_hydra_override()],
        kv_sep=dirname.kv_sep, item_sep=dirname.item_sep, exclude_keys=dirname.exclude_keys)
