"""Model construction: any torchvision classification architecture with a new classifier head,
or the user's own model (`model._target_`).

`model.name` is any name `torchvision.models.list_models(module=torchvision.models)` gives
(resnet50, efficientnet_b0, vit_b_16, convnext_tiny, ...). The head is found generically (the
layer that produces the 1000 ImageNet classes, wherever the architecture keeps it) and replaced by
one over the data set's classes. Pretrained ImageNet weights are only ever read from TORCH_HOME's
cache: a run never depends on the network.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple

import torch
import torchvision
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hpcbench.config import ModelConfig
from hpcbench.errors import ConfigError, WeightsError
from hpcbench.model_names import architecture_names
from hpcbench.user_code import call_target

IMAGENET_CLASSES = 1000


def _weights(name: str):
    """The ImageNet weights `pretrained=True` gave in torchvision (IMAGENET1K_V1, what the original
    study fine-tuned), else the architecture's default weights."""
    weights = torchvision.models.get_model_weights(name)
    return getattr(weights, "IMAGENET1K_V1", weights.DEFAULT)


def pretrained_weights_path(name: str) -> Path:
    """Where torchvision caches the ImageNet weights of `name` ($TORCH_HOME/hub/checkpoints/...)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_weights(name).url)


def check_pretrained_available(name: str) -> Path:
    path = pretrained_weights_path(name)
    if not path.is_file():
        raise WeightsError(
            f"model.pretrained=true needs {path} (TORCH_HOME={os.environ.get('TORCH_HOME', '~/.cache/torch')}); "
            f"download {_weights(name).url} on a machine with internet and put it there, or set model.pretrained=false"
        )
    return path


def _constructor_arguments(name: str, image_size: int, pretrained: bool) -> dict:
    """Constructor arguments of architectures built for one input size (ViT, MaxViT), and of those
    whose default initialization torchvision announces it will change (named, so no FutureWarning)."""
    if name in ("googlenet", "inception_v3"):
        return {"init_weights": True}
    if name.startswith("vit_"):
        patch = int(name.split("_")[-1])
        if image_size % patch:
            raise ConfigError(f"model.name={name} cuts images into {patch} px patches: data.image_size={image_size} "
                              f"must be a multiple of {patch}")
        return {"image_size": image_size}
    if name == "maxvit_t" and image_size != 224:
        if pretrained:
            raise ConfigError("model.name=maxvit_t with pretrained weights needs data.image_size=224")
        return {"input_size": (image_size, image_size)}
    return {}


def _load_imagenet_weights(model: nn.Module, name: str, image_size: int) -> None:
    path = check_pretrained_available(name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if name.startswith("vit_") and image_size != 224:  # position embeddings for the new grid
            from torchvision.models.vision_transformer import interpolate_embeddings

            state = interpolate_embeddings(image_size, int(name.split("_")[-1]), state)
        model.load_state_dict(state)
    except Exception as error:  # truncated file, wrong architecture, unsafe pickle
        raise WeightsError(f"cannot load ImageNet weights {path} into {name}: {error}") from error


def _drop_auxiliary_heads(model: nn.Module) -> None:
    """GoogLeNet and Inception v3 train side classifiers; a scaling study trains the main one
    (as torchvision does when it loads their weights without aux_logits)."""
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for attribute in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, attribute):
                setattr(model, attribute, None)


def _head(model: nn.Module) -> Tuple[nn.Module, str]:
    """(parent module, attribute) of the last layer producing the 1000 ImageNet classes."""
    found = None
    for name, module in model.named_modules():
        if (isinstance(module, nn.Linear) and module.out_features == IMAGENET_CLASSES) or (
                isinstance(module, nn.Conv2d) and module.out_channels == IMAGENET_CLASSES):
            found = name
    if found is None:
        raise ConfigError(f"cannot find the classifier layer of {type(model).__name__}")
    parent_name, _, attribute = found.rpartition(".")
    return model.get_submodule(parent_name) if parent_name else model, attribute


def replace_head(model: nn.Module, num_classes: int) -> None:
    parent, attribute = _head(model)
    old = getattr(parent, attribute)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:  # SqueezeNet classifies with a 1x1 convolution
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=old.kernel_size)
    setattr(parent, attribute, new)


def build_model(name: str, num_classes: int, pretrained: bool = False, image_size: int = 224) -> nn.Module:
    """torchvision's `name` with a `num_classes` head (ImageNet weights first when `pretrained`)."""
    if name not in architecture_names():
        raise ConfigError(f"model.name={name!r} is not a torchvision classification model (hpcbench-train --models)")
    model = torchvision.models.get_model(name, weights=None, **_constructor_arguments(name, image_size, pretrained))
    if pretrained:
        _load_imagenet_weights(model, name, image_size)
    _drop_auxiliary_heads(model)
    replace_head(model, num_classes)
    return model


def build_custom_model(target: str, args: dict, num_classes: int) -> nn.Module:
    """The user's `target(num_classes=..., **args)`."""
    model = call_target("model._target_", target, args, ConfigError, num_classes=num_classes)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model._target_={target} must return a torch nn.Module, got {type(model).__name__}")
    return model


def build_configured_model(model: ModelConfig, num_classes: int, image_size: int) -> nn.Module:
    """The model a run's `model` config describes, with a `num_classes` head."""
    if model._target_:
        return build_custom_model(model._target_, model.args, num_classes)
    return build_model(model.name, num_classes, model.pretrained, image_size)


def forward_flops(model: nn.Module, name: str, image_size: int) -> int:
    """The FLOPs of one image's forward pass, counted in a pass on the meta device (shapes only, no
    memory, no arithmetic). The same pass refuses, in one line at start, an architecture that cannot
    take `image_size` pixels: one meta pass, as a cold one costs a process 0.6 s (mobilenet_v2)."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    probe = copy.deepcopy(model).to("meta").eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            probe(torch.empty(1, 3, image_size, image_size, device="meta"))
    except (RuntimeError, ValueError, AssertionError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"model {name} cannot take data.image_size={image_size} inputs ({first}); "
                          f"raise data.image_size") from None
    return counter.get_total_flops()


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile's and DDP's wrappers (its state_dict has plain keys)."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, DistributedDataParallel) else model


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
