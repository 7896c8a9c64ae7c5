"""Models and the pretrained-weights path (weights written by the test; nothing downloaded)."""
from __future__ import annotations

import pytest
import torch
import torchvision

from hpcbench.errors import WeightsError
from hpcbench.models import build_model, pretrained_weights_path

REFERENCE_MODELS = ["mobilenet_v2", "resnet18"]


@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_models_have_a_head_for_the_data_set_classes(name):
    model = build_model(name, num_classes=10)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_mobilenet_v2_has_the_reference_parameter_count():
    model = build_model("mobilenet_v2", num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == 2_236_682


@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_pretrained_weights_load_from_torch_home(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    imagenet_model = torchvision.models.get_model(name, weights=None)  # stands in for the published ImageNet weights
    path = pretrained_weights_path(name)
    assert path.parent == tmp_path / "hub" / "checkpoints"
    path.parent.mkdir(parents=True)
    torch.save(imagenet_model.state_dict(), path)

    model = build_model(name, num_classes=10, pretrained=True)
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
