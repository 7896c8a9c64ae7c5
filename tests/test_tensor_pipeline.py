"""The device-resident pipeline: same transforms as the PIL recipe, same distributions, exact shards."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from helpers import TINY, compose_run
from PIL import Image
from torchvision import transforms as T

from hpcbench.data.augment import AugmentParams, augment, colour_jitter, resize_and_normalise, sample_params
from hpcbench.data.pipeline import build_pipeline
from hpcbench.data.sources import CACHE_DIR, SyntheticSource
from hpcbench.data.transforms import CROP_SCALE, eval_transform
from hpcbench.training.step import resolve_precision
from hpcbench.training.trainer import fit

CPU = torch.device("cpu")


def _batch(n: int = 16) -> torch.Tensor:
    source = SyntheticSource(seed=3, split="train", size=n)
    return torch.from_numpy(np.stack([source.array(i) for i in range(n)])).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize("size", [32, 64, 224])
def test_without_augmentation_it_equals_resize_and_normalize(size):
    images = _batch()
    ours = resize_and_normalise(images, size)
    reference = torch.stack([eval_transform(size)(Image.fromarray(img.permute(1, 2, 0).numpy())) for img in images])
    difference = (ours - reference).abs()
    # PIL's and torch's bilinear upsampling differ by rounding only (uint8 in PIL): ~1/255 in [0, 1].
    assert difference.mean() < 0.01 and difference.max() < 0.1, (difference.mean(), difference.max())


def _identity_params(n: int, flip: bool = False) -> AugmentParams:
    ones, zeros = torch.ones(n), torch.zeros(n)
    return AugmentParams(crop_scale=ones, crop_ratio=ones, flip=torch.full((n,), flip), angle_deg=zeros,
                         brightness=ones, contrast=ones, saturation=ones, hue=zeros, order=[0, 1, 2, 3])


def test_neutral_augmentation_is_the_plain_resize_and_flip_mirrors():
    images, generator = _batch(4), torch.Generator().manual_seed(0)
    plain = augment(images, 64, generator, _identity_params(4))
    assert torch.allclose(plain, resize_and_normalise(images, 64), atol=2e-2)
    flipped = augment(images, 64, generator, _identity_params(4, flip=True))
    assert torch.allclose(flipped, plain.flip(-1), atol=1e-4)


def test_sampled_parameters_follow_the_original_transforms():
    n = 20000
    params = sample_params(n, torch.Generator().manual_seed(1), CPU)
    assert params.crop_scale.min() >= CROP_SCALE[0] and params.crop_scale.max() <= CROP_SCALE[1]
    assert params.crop_ratio.min() >= 3 / 4 - 1e-6 and params.crop_ratio.max() <= 4 / 3 + 1e-6
    assert ((params.crop_scale * params.crop_ratio <= 1 + 1e-6) & (params.crop_scale / params.crop_ratio <= 1 + 1e-6)).all()
    # torchvision's own RandomResizedCrop on a 224 x 224 image: the same area fractions.
    torch.manual_seed(1)
    tv = [T.RandomResizedCrop.get_params(torch.zeros(3, 224, 224), CROP_SCALE, (3 / 4, 4 / 3)) for _ in range(4000)]
    tv_scale = np.array([h * w / 224**2 for _, _, h, w in tv])
    assert abs(params.crop_scale.mean().item() - tv_scale.mean()) < 0.01
    assert abs(params.flip.float().mean().item() - 0.5) < 0.02
    assert params.angle_deg.abs().max() <= 15 and abs(params.angle_deg.std().item() - 15 / math.sqrt(3)) < 0.2
    for name, low, high in [("brightness", 0.7, 1.3), ("contrast", 0.7, 1.3), ("saturation", 0.7, 1.3), ("hue", -0.1, 0.1)]:
        values = getattr(params, name)
        assert values.min() >= low and values.max() <= high
        assert abs(values.mean().item() - (low + high) / 2) < 0.01 * (high - low) * 2
    assert sorted(params.order) == [0, 1, 2, 3]


def _reference_colour_jitter(images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Each operation as torchvision's functional transforms define it, one tensor op at a time."""
    gray_weights = torch.tensor([0.299, 0.587, 0.114])
    rgb_to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])

    def per(values: torch.Tensor) -> torch.Tensor:
        return values.view(-1, 1, 1, 1)

    for operation in params.order:
        gray = torch.einsum("bchw,c->bhw", images, gray_weights).unsqueeze(1)
        if operation == 0:
            images = images * per(params.brightness)
        elif operation == 1:
            images = per(params.contrast) * images + (1 - per(params.contrast)) * gray.mean(dim=(1, 2, 3), keepdim=True)
        elif operation == 2:
            images = per(params.saturation) * images + (1 - per(params.saturation)) * gray
        else:
            yiq = torch.einsum("bchw,dc->bdhw", images, rgb_to_yiq)
            angle = params.hue.view(-1, 1, 1) * 2 * math.pi
            i, q = yiq[:, 1], yiq[:, 2]
            rotated = torch.stack([yiq[:, 0], i * angle.cos() - q * angle.sin(), i * angle.sin() + q * angle.cos()], 1)
            images = torch.einsum("bchw,dc->bdhw", rotated, torch.linalg.inv(rgb_to_yiq))
        images = images.clamp(0, 1)
    return images


def test_colour_jitter_in_one_pass_per_operation_equals_the_operations_one_by_one():
    """The batched jitter folds saturation and hue into a 3 x 3 matrix per image: the same numbers
    as the operations written out (to float rounding), for every order the draw can give."""
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(16, 3, 24, 24, generator=generator)
    for seed in range(6):
        random.seed(seed)
        params = sample_params(16, generator, CPU)
        assert torch.allclose(colour_jitter(images.clone(), params), _reference_colour_jitter(images, params), atol=1e-5)


def test_augmented_batches_are_normalised_images_of_the_right_size():
    out = augment(_batch(8), 96, torch.Generator().manual_seed(0))
    assert out.shape == (8, 3, 96, 96) and torch.isfinite(out).all()
    # Colour jitter and rotation keep pixels within the normalised range of [0, 1] inputs.
    assert out.min() >= (0 - 0.485) / 0.229 - 1e-4 and out.max() <= (1 - 0.406) / 0.225 + 1e-4


def test_epoch_shards_are_disjoint_cover_the_data_and_change_per_epoch():
    run = compose_run([*TINY, "mode=ddp", "mode.device=cpu", "data.limit_train=100"])
    pipelines = [build_pipeline(run, rank, 2, CPU) for rank in range(2)]
    per_epoch = []
    for epoch in (1, 2):
        shards = []
        for pipeline in pipelines:
            pipeline.set_epoch(epoch, run.train.seed)
            shards.append(pipeline.train_loader.indices().tolist())
        assert not set(shards[0]) & set(shards[1])
        assert sorted(shards[0] + shards[1]) == list(range(100))
        per_epoch.append(shards[0])
    assert per_epoch[0] != per_epoch[1]


def test_each_rank_holds_and_evaluates_only_its_shard_of_the_test_set():
    run = compose_run([*TINY, "mode=ddp", "mode.device=cpu", "data.limit_test=65"])
    whole = torch.cat([images for images, _ in build_pipeline(run, 0, 1, CPU).test_loader])
    pipelines = [build_pipeline(run, rank, 2, CPU) for rank in range(2)]
    assert [len(p.test_loader.images) for p in pipelines] == [33, 32]  # not 65 on each
    assert all(p.num_test == 65 for p in pipelines)
    seen = [torch.cat([images for images, _ in p.test_loader]) for p in pipelines]
    assert sorted(map(tuple, torch.cat(seen).flatten(1)[:, ::97].tolist())) == sorted(
        map(tuple, whole.flatten(1)[:, ::97].tolist()))  # together, every test image once


def _cifar_run(tmp_path, cifar_root, name, overrides):
    run = compose_run(["data=image_folder", f"data.root={cifar_root}", "data.image_size=32", "data.limit_train=2500",
                       "data.limit_test=1000", "model=resnet18", "train.lr=1e-3", "train.epochs=2",
                       "batch_size=per_device_64", "train.probe=false", *overrides])
    return fit(run, tmp_path / name)


@pytest.mark.slow
def test_the_fast_recipe_learns_as_well_as_the_original_recipe(tmp_path, cifar_root):
    """The fast recipe is what the defaults pick on this machine: the tensor pipeline, channels_last
    and `train.precision=auto` (bf16 where the CPU computes it natively, else fp32; a CPU without
    native bf16 would run a forced bf16 in slow reference kernels that no user is given)."""
    original = _cifar_run(tmp_path, cifar_root, "original", ["data.pipeline=pil", "data.num_workers=2",
                                                             "train.precision=fp32", "train.channels_last=false"])
    fast = _cifar_run(tmp_path, cifar_root, "fast", ["data.pipeline=auto"])
    assert (fast.precision, fast.channels_last, fast.pipeline) == (resolve_precision("auto", CPU), True, "tensor")
    assert original.best_test_acc > 0.25 and fast.best_test_acc > 0.25
    assert abs(fast.best_test_acc - original.best_test_acc) < 0.08, (original.best_test_acc, fast.best_test_acc)
    assert list((cifar_root / CACHE_DIR).glob("train-2500-*.pt"))  # decoded once, cached beside the data


@pytest.mark.slow
def test_the_decode_cache_is_written_by_rank_0_reused_and_a_damaged_one_rebuilt(tmp_path):
    root = tmp_path / "images"
    for split in ("train", "test"):
        for label in range(2):
            (root / split / f"c{label}").mkdir(parents=True)
            for i in range(6):
                Image.new("RGB", (32, 32), (40 * i, 200 * label, 90)).save(root / split / f"c{label}" / f"{i}.png")
    overrides = [*TINY, "data=image_folder", f"data.root={root}", "train.epochs=1"]
    build_pipeline(compose_run([*overrides, "mode=ddp", "mode.ranks=2"]), 1, 2, CPU)
    assert not (root / CACHE_DIR).exists()  # rank 0 alone writes it: one writer of a shared file
    first = fit(compose_run(overrides), tmp_path / "first")
    [cache] = (root / CACHE_DIR).glob("train-*.pt")
    cache.write_bytes(b"damaged")
    second = fit(compose_run(overrides), tmp_path / "second")
    assert first.final_test_acc == second.final_test_acc
    assert torch.load(cache, weights_only=True).shape == (12, 3, 32, 32)
