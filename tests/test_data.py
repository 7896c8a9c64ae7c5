"""Image sources, class-balanced subsets and the original study's transforms."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hpcbench.data.sampling import ShardSampler
from hpcbench.data.sources import ImageFolderSource, SyntheticSource, balanced_first_n
from hpcbench.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform
from hpcbench.errors import DataError


def test_balanced_first_n_interleaves_classes_in_their_own_order():
    labels = [0] * 5 + [1] * 5 + [2] * 5  # sorted, as an ImageFolder lists them
    chosen = balanced_first_n(labels, 7)
    assert chosen == [0, 5, 10, 1, 6, 11, 2]
    assert balanced_first_n(labels, None) == list(range(15))
    assert balanced_first_n(labels, 100) == list(range(15))


def test_balanced_first_n_with_uneven_classes_takes_what_exists():
    labels = [0, 0, 0, 0, 1]
    assert balanced_first_n(labels, 4) == [0, 4, 1, 2]


def test_synthetic_images_are_deterministic_cifar_shaped_and_class_conditional():
    source = SyntheticSource(seed=42, split="train", size=200)
    again = SyntheticSource(seed=42, split="train", size=200)
    other_seed = SyntheticSource(seed=43, split="train", size=200)
    first = source.array(3)
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again.array(3))
    assert not np.array_equal(first, other_seed.array(3))
    assert source.labels[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    # Class-conditional: images of one class are closer to each other than to other classes.
    images = np.stack([source.array(i) for i in range(200)]).astype(float).reshape(200, -1)
    labels = np.array(source.labels)
    means = np.stack([images[labels == c].mean(0) for c in range(10)])
    nearest = np.argmin(((images[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (nearest == labels).mean() > 0.9


def test_train_and_test_splits_differ_but_share_classes():
    train = SyntheticSource(seed=1, split="train", size=10)
    test = SyntheticSource(seed=1, split="test", size=10)
    assert not np.array_equal(train.array(0), test.array(0))
    assert train.classes == test.classes


def _write_image(path, colour=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), colour).save(path)


def test_image_folder_reads_classes_and_images(tmp_path):
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            _write_image(tmp_path / split / name / "a.jpg")
    source = ImageFolderSource(tmp_path, "train")
    assert source.classes == ["cat", "dog"] and source.labels == [0, 1]
    assert source.load(0).size == (32, 32)


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderSource(tmp_path, "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        ImageFolderSource(tmp_path, "train")
    (tmp_path / "train" / "cat").mkdir()
    with pytest.raises(DataError, match="cat holds no images"):
        ImageFolderSource(tmp_path, "train")
    (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    source = ImageFolderSource(tmp_path, "train")
    with pytest.raises(DataError, match="broken.jpg"):
        source.load(0)


def test_shard_sampler_covers_every_index_once_without_padding():
    shards = [list(ShardSampler(10, rank, 3)) for rank in range(3)]
    assert sorted(sum(shards, [])) == list(range(10))
    assert [len(s) for s in shards] == [4, 3, 3]


def test_eval_transform_is_resize_and_imagenet_normalisation():
    image = Image.new("RGB", (32, 32), (255, 0, 128))
    tensor = eval_transform(64)(image)
    assert tensor.shape == (3, 64, 64)
    expected = (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(tensor[:, 10, 10], expected, atol=1e-4)


def test_train_transform_augments_and_keeps_the_shape():
    image = Image.fromarray(SyntheticSource(seed=0, split="train", size=1).array(0))
    torch.manual_seed(0)
    a, b = train_transform(48)(image), train_transform(48)(image)
    assert a.shape == b.shape == (3, 48, 48)
    assert not torch.equal(a, b)
    assert torch.equal(train_transform(48, augment=False)(image), eval_transform(48)(image))
