"""hpcbench-serve RUN_DIR: a Gradio page that classifies an uploaded image (top-3 classes).

    hpcbench-serve outputs/runs/<run>                      # http://127.0.0.1:7860
    hpcbench-serve outputs/runs/<run> --host 0.0.0.0 --port 8080 --threshold 0.6
Needs the `serve` extra: pip install 'hpcbench[serve]'.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import List, Optional

from hpcbench.cli import fail
from hpcbench.errors import HpcbenchError
from hpcbench.serve.predictor import Predictor

# Nothing leaves the machine: no analytics, no version check, no hub look-ups.
OFFLINE = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def classify(predictor: Predictor, image) -> tuple[dict, str]:
    """The page's two outputs: the top-3 (class -> probability) and a verdict line that says
    whether the top probability clears the threshold."""
    import gradio as gr

    if image is None:
        raise gr.Error("Upload an image first.")
    try:
        prediction = predictor.predict(image, k=3)
    except HpcbenchError as error:
        raise gr.Error(str(error)) from None
    best = prediction.top[0][1]
    verdict = (f"uncertain: the top probability {best:.2f} is below {predictor.threshold:.2f}" if prediction.uncertain
               else f"confident: the top probability {best:.2f} is at least {predictor.threshold:.2f}")
    return dict(prediction.top), verdict


def build_app(predictor: Predictor):
    import gradio as gr

    def predict(image):
        return classify(predictor, image)

    description = (f"Serving {predictor.describe()}. Predictions whose top probability is below "
                   f"{predictor.threshold:.2f} are marked *uncertain*.")
    return gr.Interface(fn=predict, inputs=gr.Image(type="pil", image_mode="RGB", label="Image"),
                        outputs=[gr.Label(num_top_classes=3, label="Top-3 classes"), gr.Textbox(label="Confidence")],
                        title="hpcbench classifier", description=description, flagging_mode="never")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="hpcbench-serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run directory (uses checkpoints/best.pt) or a checkpoint file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args(argv)
    for key, value in OFFLINE.items():
        os.environ.setdefault(key, value)
    try:
        import gradio  # noqa: F401
    except ImportError:
        fail("hpcbench-serve", "gradio is not installed; pip install 'hpcbench[serve]'", 2)
    try:
        predictor = Predictor(args.run, args.threshold)
    except HpcbenchError as error:
        fail("hpcbench-serve", str(error), 2)
    print(f"serving {predictor.describe()} on http://{args.host}:{args.port}", flush=True)
    build_app(predictor).launch(server_name=args.host, server_port=args.port, ssr_mode=False, share=False,
                                show_error=True)


if __name__ == "__main__":
    main()
