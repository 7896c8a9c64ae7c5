"""The evaluation transform of each pipeline, for one image: serving classifies exactly the
pixels the run's evaluation saw (a test holds the two equal to the bit)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from PIL import Image

from hpcbench.data.augment import resize_and_normalise
from hpcbench.data.stream_pipeline import resized_uint8
from hpcbench.data.transforms import eval_transform


def eval_preprocess(pipeline: str, image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """RGB image -> the normalised (3, size, size) tensor the run's evaluation computed from it."""
    if pipeline == "pil":
        return eval_transform(image_size)
    decoded_to_size = pipeline in ("compressed", "stream")

    def tensor_eval(image: Image.Image) -> torch.Tensor:
        pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
        if decoded_to_size and max(pixels.shape[-2:]) > image_size:  # the stream's decode step (to uint8)
            pixels = resized_uint8(pixels, (image_size, image_size))
        return resize_and_normalise(pixels.unsqueeze(0), image_size)[0]

    return tensor_eval
