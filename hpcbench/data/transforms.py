"""The original study's image transforms: one definition shared by training, evaluation and serving."""
from __future__ import annotations

from torchvision import transforms as T

# Pretrained torchvision models expect ImageNet statistics; the original study trained with these
# and its web page (wrongly) used CIFAR statistics. Everything here uses these two constants.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CROP_SCALE = (0.7, 1.0)
JITTER = dict(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1)
ROTATION_DEGREES = 15


def train_transform(image_size: int, augment: bool = True) -> T.Compose:
    """Resize -> RandomResizedCrop(0.7-1) -> flip -> ColorJitter -> RandomRotation(15) -> tensor.

    Resize takes (size, size) so non-square inputs become square too; for the square CIFAR
    images this is exactly the original study's Resize(size).
    """
    if not augment:
        return eval_transform(image_size)
    return T.Compose(
        [
            T.Resize((image_size, image_size)),
            T.RandomResizedCrop(image_size, scale=CROP_SCALE),
            T.RandomHorizontalFlip(),
            T.ColorJitter(**JITTER),
            T.RandomRotation(ROTATION_DEGREES),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def eval_transform(image_size: int) -> T.Compose:
    return T.Compose(
        [T.Resize((image_size, image_size)), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
