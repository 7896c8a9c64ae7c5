"""A sweep's planning: each choice of config groups composed once (slurm/compose.py) gives the
config Hydra composes, and the planner's shortcut (slurm/planning.py) the plan of the whole way."""
from __future__ import annotations

import sys

import pytest
from helpers import PRIMARY_CONFIG, run_cli
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import OmegaConf

from hpcbench.errors import ConfigError
from hpcbench.slurm.compose import SweepComposer
from hpcbench.slurm.planning import SweepPlanner
from hpcbench.train import CONFIG_DIR

JOBS = [  # overrides of a sweep's jobs, as the sweeper hands them over
    ["hardware=ci_cluster", "mode=cpu", "model=resnet18", "train.seed=3"],
    ["hardware=ci_cluster", "train.seed=4", "mode=cpu", "model=resnet18"],  # same groups, another order
    ["hardware=ci_cluster", "mode=ddp", "mode.ranks=4", "mode.nodes=2", "train.lr=1"],  # an int for a float
    ["hardware=ci_cluster_gpu", "mode=ddp", "mode.ranks=2", "hardware.accelerator=cpu"],  # interpolated: mode.device
    ["hardware=ci_cluster", "experiment=quickstart", "train.epochs=2", "hydra.job.name=study"],
    ["hardware=ci_cluster", "mode=cpu", "+hardware.setup=[module load x]"],  # an addition
    ["hardware=ci_cluster", "mode=cpu", "batch_size=global_128", "train.seed='7'"],  # a string for an int
    ["hardware=ci_cluster", "mode=cpu", "paths.root_dir=/scratch/me"],  # interpolated: data, output dirs
    ["hardware=ci_cluster", "hydra.sweep.subdir=run_${hydra.job.num}", "train.seed=2"],  # an interpolated line
]


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    """Hydra's own loader and the master config of `hpcbench-train -m hydra.sweep.dir=...`."""
    sweep_dir = tmp_path_factory.mktemp("sweep")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().hydra.config_loader  # type: ignore[union-attr]
        config = loader.load_configuration(PRIMARY_CONFIG, [f"hydra.sweep.dir={sweep_dir}"], RunMode.MULTIRUN)
        yield loader, config


def _hydra_or_error(load, *args):
    try:
        return OmegaConf.to_yaml(load(*args))
    except ConfigCompositionException as error:
        return f"{type(error).__name__}: {error} <- {error.__cause__}"


@pytest.mark.parametrize("overrides", JOBS + [["mode=cpu", "train.no_such_key=1"], ["train.seed=x"], ["~train.seed"],
                                              ["~train.no_such_key"], ["model=no_such_model"]])
def test_a_shared_composition_gives_the_config_hydra_composes(master, overrides):
    loader, config = master
    composer = SweepComposer(loader)
    composer.load_sweep_config(config, ["hardware=ci_cluster", "mode=cpu", "train.seed=1"])  # fill the cache first
    assert _hydra_or_error(composer.load_sweep_config, config, overrides) == \
        _hydra_or_error(loader.load_sweep_config, config, overrides)


def test_a_masters_interpolated_override_is_recorded_unresolved(master):
    loader, _ = master
    config = loader.load_configuration(PRIMARY_CONFIG, ["hydra.sweep.subdir=run_${hydra.job.num}"], RunMode.MULTIRUN)
    overrides = ["model=resnet18", "train.seed=2"]
    assert _hydra_or_error(SweepComposer(loader).load_sweep_config, config, overrides) == \
        _hydra_or_error(loader.load_sweep_config, config, overrides)


def test_a_grid_composes_each_choice_of_groups_once(master):
    loader, config = master
    composer = SweepComposer(loader)
    for model in ("resnet18", "mobilenet_v2"):
        for seed in range(5):
            composer.load_sweep_config(config, [f"model={model}", f"train.seed={seed}", "train.epochs=2"])
    assert composer.compositions == 2


def test_the_planners_shortcut_plans_what_the_whole_way_plans(master):
    loader, config = master
    planner = SweepPlanner(SweepComposer(loader), config, {"comment": None, "mem_gb": None})
    for num, overrides in enumerate(JOBS):
        assert planner.plan(num, overrides) == planner._whole(num, overrides)
    shortcut = [num for num, overrides in enumerate(JOBS) if planner._shortcut(num, overrides) is not None]
    assert shortcut == [0, 1, 2, 6]  # not: an interpolated key, a hydra key, an addition, another subdir
    assert planner.plan(2, JOBS[2]).request.nodes == 2 and planner.plan(2, JOBS[2]).request.tasks_per_node == 2
    assert planner.plan(9, JOBS[0]).run_dir == planner._whole(9, JOBS[0]).run_dir


def test_an_impossible_job_is_named_whichever_way_it_is_planned(master):
    loader, config = master
    planner = SweepPlanner(SweepComposer(loader), config, {})
    bad = ["hardware=ci_cluster", "mode=ddp", "mode.ranks=3", "mode.nodes=2"]
    with pytest.raises(ConfigError, match=r"^job #5 \(hardware=ci_cluster mode=ddp mode.ranks=3 mode.nodes=2\): "
                                          r"mode.ranks=3 is not divisible by mode.nodes=2$"):
        planner.plan(5, bad)
    assert planner._shortcut(5, ["hardware=ci_cluster", "mode=ddp", "mode.ranks=2"]) is not None


def test_a_dry_run_prints_each_array_once_and_a_line_per_job(tmp_path):
    result = run_cli(["-m", "hydra/launcher=slurm", "hydra.launcher.dry_run=true", "hardware=ci_cluster",
                      f"hardware.python={sys.executable}", "mode=cpu", "model=resnet18,mobilenet_v2",
                      "train.seed=range(0,30)", f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("#!/bin/bash") == out.count("\nArray ") and out.count("\nArray ") >= 1
    assert "Dry run: 60 run(s) in 60 Slurm job(s)" in out and out.count(" model=resnet18 train.seed=") == 30
    assert f"#59 hardware=ci_cluster hardware.python={sys.executable} mode=cpu model=mobilenet_v2 train.seed=29  " \
           f"({tmp_path / 'sweep' / '59'})" in out
