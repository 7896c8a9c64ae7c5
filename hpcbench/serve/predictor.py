"""A trained run as a classifier: the model rebuilt from the run's own config and its best
checkpoint (loaded safely), each image prepared by the evaluation path of the pipeline the run
used (summary.json's `pipeline`: torch's resize on uint8 pixels for `tensor`, PIL's for `pil`), so a served
image gets exactly the pixels evaluation gave it.

The original study's web page normalised with CIFAR statistics while training used ImageNet's;
here there is one definition per pipeline (hpcbench.data.eval_preprocess).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Union

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from hpcbench.data.eval_preprocess import eval_preprocess
from hpcbench.errors import HpcbenchError
from hpcbench.models import build_configured_model
from hpcbench.rundir import BEST, CHECKPOINTS, RESOLVED_CONFIG, read_resolved_config, read_summary
from hpcbench.training.checkpoint import CheckpointError, safe_load

MAX_PIXELS = 50_000_000  # refuse decompression bombs instead of exhausting memory


class PredictionError(HpcbenchError):
    """An input that cannot be classified (not an image, empty, too large)."""


@dataclass
class Prediction:
    top: List[tuple]  # (class name, probability), best first
    uncertain: bool  # the best probability is below the threshold

    @property
    def label(self) -> str:
        return self.top[0][0]

    def as_dict(self) -> dict:
        return {"label": self.label, "uncertain": self.uncertain,
                "top": [{"class": name, "probability": round(p, 6)} for name, p in self.top]}


def _checkpoint_path(target: Path) -> tuple[Path, Path]:
    """(run directory, checkpoint) for a run directory or a checkpoint file inside one."""
    if target.is_file():
        return target.parent.parent, target
    if target.is_dir():
        return target, target / CHECKPOINTS / f"{BEST}.pt"
    raise PredictionError(f"{target} is neither a run directory nor a checkpoint file")


class Predictor:
    def __init__(self, target: Union[str, Path], threshold: float = 0.5, device: str = "auto"):
        run_dir, checkpoint = _checkpoint_path(Path(target))
        if not (run_dir / RESOLVED_CONFIG).is_file():
            raise PredictionError(f"{run_dir} holds no resolved_config.yaml: is it an hpcbench run directory?")
        if not checkpoint.is_file():
            raise PredictionError(f"{checkpoint} does not exist: has the run finished an epoch?")
        self.config = read_resolved_config(run_dir)
        state = safe_load(checkpoint)
        self.classes: List[str] = list(state.get("classes") or [])
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))
        self.model = build_configured_model(self.config.model, len(self.classes), self.config.data.image_size)
        try:
            self.model.load_state_dict(state["model"])
        except (KeyError, RuntimeError) as error:
            first = str(error).strip().splitlines()[0]
            raise CheckpointError(f"{checkpoint} does not match the run's config ({self.config.model.name}, "
                                  f"{len(self.classes)} classes): {first}") from None
        self.model.to(self.device).eval()
        # The pipeline the run used (data.pipeline=auto is resolved there); older runs: their config's.
        pipeline = read_summary(run_dir).get("pipeline") or self.config.data.pipeline
        self.transform = eval_preprocess(pipeline, self.config.data.image_size)
        self.threshold = threshold
        self.run_dir, self.checkpoint = run_dir, checkpoint
        self.epoch, self.test_acc = state.get("epoch"), state.get("test_acc")

    def describe(self) -> str:
        return (f"{self.config.model.name} from {self.run_dir.name}, {self.checkpoint.name} "
                f"(epoch {self.epoch}, test accuracy {self.test_acc:.4f}), {self.config.data.image_size} px")

    @staticmethod
    def prepare(image: Image.Image) -> Image.Image:
        """Any mode (grayscale, RGBA, CMYK, palette) and orientation to plain RGB."""
        if image.width * image.height > MAX_PIXELS:
            raise PredictionError(f"the image is {image.width}x{image.height}; at most {MAX_PIXELS:,} pixels")
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "P"):
            background = Image.new("RGB", image.size, (255, 255, 255))
            rgba = image.convert("RGBA")
            background.paste(rgba, mask=rgba.getchannel("A"))
            return background
        return image.convert("RGB")

    @torch.no_grad()
    def predict(self, image: Image.Image, k: int = 3) -> Prediction:
        tensor = self.transform(self.prepare(image)).unsqueeze(0).to(self.device)
        probabilities = torch.softmax(self.model(tensor).float(), dim=1)[0]
        values, indices = probabilities.topk(min(k, len(self.classes)))
        top = [(self.classes[i], float(v)) for v, i in zip(values.tolist(), indices.tolist(), strict=True)]
        return Prediction(top, top[0][1] < self.threshold)

    def predict_file(self, path: Union[str, Path], k: int = 3) -> Prediction:
        path = Path(path)
        if not path.is_file():
            raise PredictionError(f"{path} does not exist")
        if path.stat().st_size == 0:
            raise PredictionError(f"{path} is empty")
        try:
            with Image.open(path) as image:
                image.load()
                return self.predict(image, k)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
            raise PredictionError(f"{path} is not a readable image ({error})") from None
