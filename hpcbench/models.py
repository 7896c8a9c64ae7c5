"""Model construction: torchvision architectures with a classifier head for the data set's classes."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torch import nn

from hpcbench.errors import WeightsError

# name -> (constructor, ImageNet weights enum). Pretrained weights are only ever read from
# TORCH_HOME's cache: a run must never depend on the network.
ARCHITECTURES = {
    "mobilenet_v2": (torchvision.models.mobilenet_v2, torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1),
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
}


def pretrained_weights_path(name: str) -> Path:
    """Where torchvision caches the ImageNet weights of `name` ($TORCH_HOME/hub/checkpoints/...)."""
    url = ARCHITECTURES[name][1].url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def check_pretrained_available(name: str) -> Path:
    path = pretrained_weights_path(name)
    if not path.is_file():
        url = ARCHITECTURES[name][1].url
        raise WeightsError(
            f"model.pretrained=true needs {path} (TORCH_HOME={os.environ.get('TORCH_HOME', '~/.cache/torch')}); "
            f"download {url} on a machine with internet and put it there, or set model.pretrained=false"
        )
    return path


def _load_imagenet_weights(model: nn.Module, name: str) -> None:
    path = check_pretrained_available(name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as error:  # truncated file, wrong architecture, unsafe pickle
        raise WeightsError(f"cannot load ImageNet weights {path} into {name}: {error}") from error


def replace_head(model: nn.Module, name: str, num_classes: int) -> None:
    if name == "mobilenet_v2":
        model.classifier[1] = nn.Linear(model.classifier[1].in_features, num_classes)
    else:
        model.fc = nn.Linear(model.fc.in_features, num_classes)


def build_model(name: str, num_classes: int, pretrained: bool = False) -> nn.Module:
    constructor, _ = ARCHITECTURES[name]
    model = constructor(weights=None)  # built with the 1000-class ImageNet head
    if pretrained:
        _load_imagenet_weights(model, name)
    replace_head(model, name, num_classes)
    return model
