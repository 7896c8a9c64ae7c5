"""Models and the pretrained-weights path (weights written by the test; nothing downloaded)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
import torchvision
from helpers import run_cli
from torch import nn

from hpcbench.errors import ConfigError, WeightsError
from hpcbench.models import IMAGENET_CLASSES, architecture_names, build_model, forward_flops, pretrained_weights_path

REFERENCE_MODELS = ["mobilenet_v2", "resnet18"]
# RegNets compute their widths from tensors while they are built, which the meta device cannot;
# the 400mf/800mf ones (same code) are built for real.
ON_META = [name for name in architecture_names() if not (name.startswith("regnet") and name.endswith("gf"))]


def _meta_model(name: str, image_size: int = 224) -> nn.Module:
    """The model with shapes only (no memory, no arithmetic), so every architecture is checked."""
    if name.startswith("regnet"):
        return build_model(name, num_classes=7, image_size=image_size).to("meta")
    with torch.device("meta"):
        return build_model(name, num_classes=7, image_size=image_size)


@pytest.mark.parametrize("name", ON_META)
def test_every_torchvision_classifier_gets_a_head_over_the_data_set_classes(name):
    model = _meta_model(name).eval()
    assert model(torch.empty(2, 3, 224, 224, device="meta")).shape == (2, 7)
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert not any(getattr(m, "out_features", getattr(m, "out_channels", 0)) == IMAGENET_CLASSES for m in layers)


def test_the_listing_holds_the_study_s_next_models_and_no_detection_models(tmp_path):
    names = architecture_names()
    assert {"resnet50", "efficientnet_b0", "vit_b_16", "convnext_tiny", "regnet_y_400mf"} <= set(names)
    assert not any(name.startswith(("fasterrcnn", "fcn_", "deeplab", "r3d_", "raft")) for name in names)
    listed = run_cli(["--models"], tmp_path, timeout=120)
    assert listed.returncode == 0 and f"these {len(names)} torchvision classifiers" in listed.stdout
    assert [line.strip() for line in listed.stdout.splitlines()[1:]] == list(names)


def test_the_names_are_cached_per_torchvision_version_and_a_config_check_then_imports_no_torch(tmp_path):
    """A warm cache spares every config check the seconds of importing torchvision; a corrupt one is rewritten."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    cache = tmp_path / "hpcbench" / f"torchvision-{version('torchvision')}-classifiers.json"
    check = ("import sys; from helpers import compose_run; compose_run(['model.name=resnet50']); "
             "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    for contents in (None, "[not json"):  # no cache, then a corrupt one: both computed and written
        if contents is not None:
            cache.write_text(contents)
        cold = subprocess.run([sys.executable, "-c", check], cwd=Path(__file__).parent, env=env, capture_output=True,
                              text=True, timeout=120)
        assert cold.returncode == 0, cold.stderr
        assert json.loads(cache.read_text()) == list(architecture_names())
    warm = subprocess.run([sys.executable, "-c", check], cwd=Path(__file__).parent, env=env, capture_output=True,
                          text=True, timeout=120)
    assert warm.returncode == 0 and warm.stdout.strip() == "[]", warm.stdout + warm.stderr
    # A new interpreter: a forked one may hold the names already (lru_cache), not read this cache.
    typo = run_cli(["model.name=resnet_50"], tmp_path, timeout=120, env={"XDG_CACHE_HOME": str(tmp_path)},
                   fresh_interpreter=True)
    assert typo.returncode == 2 and "model.name='resnet_50' is not one of" in typo.stderr.strip().splitlines()[-1]


def test_input_size_constraints_are_named_at_start():
    with pytest.raises(ConfigError, match="vit_b_16 cuts images into 16 px patches: data.image_size=40 must be a "
                                          "multiple of 16"):
        build_model("vit_b_16", num_classes=10, image_size=40)
    with pytest.raises(ConfigError, match=r"model alexnet cannot take data.image_size=16 inputs .*raise data.image_size"):
        forward_flops(build_model("alexnet", num_classes=10), "alexnet", 16)


@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_models_have_a_head_for_the_data_set_classes(name):
    model = build_model(name, num_classes=10)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_mobilenet_v2_has_the_reference_parameter_count():
    model = build_model("mobilenet_v2", num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == 2_236_682


# ViT-B/16 at 32 px: its 224 px position embeddings are interpolated to the 2 x 2 patch grid.
@pytest.mark.parametrize(("name", "image_size"), [("mobilenet_v2", 224), ("resnet18", 224), ("efficientnet_b0", 224),
                                                  ("vit_b_16", 32)])
def test_pretrained_weights_load_from_torch_home(name, image_size, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    imagenet_model = torchvision.models.get_model(name, weights=None)  # stands in for the published ImageNet weights
    path = pretrained_weights_path(name)
    assert path.parent == tmp_path / "hub" / "checkpoints"
    path.parent.mkdir(parents=True)
    torch.save(imagenet_model.state_dict(), path)

    model = build_model(name, num_classes=10, pretrained=True, image_size=image_size)
    loaded, reference = model.state_dict(), imagenet_model.state_dict()
    backbone = [k for k in reference if loaded[k].shape == reference[k].shape]
    assert len(backbone) > 50
    assert all(torch.equal(loaded[k], reference[k]) for k in backbone)
    assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_missing_pretrained_weights_name_the_file_and_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError) as error:
        build_model("mobilenet_v2", num_classes=10, pretrained=True)
    message = str(error.value)
    assert "mobilenet_v2-b0353104.pth" in message and "TORCH_HOME" in message and str(tmp_path) in message


def test_weights_of_another_architecture_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = pretrained_weights_path("mobilenet_v2")
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match="cannot load ImageNet weights"):
        build_model("mobilenet_v2", num_classes=10, pretrained=True)
