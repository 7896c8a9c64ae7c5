"""hpcbench-predict RUN_DIR IMAGE [IMAGE ...]: top-k classes of images, for people or scripts.

    hpcbench-predict outputs/runs/<run> cat.jpg dog.png          # one line per image
    hpcbench-predict outputs/runs/<run> *.jpg --json --top-k 5   # JSON lines for scripts
Exit status 0 when every image was classified, 1 when one could not be (its error is reported and
the other images still are), 2 for a run that cannot be loaded.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List, Optional

from hpcbench.cli import fail
from hpcbench.errors import HpcbenchError
from hpcbench.serve.predictor import Predictor


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpcbench-predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run directory (uses checkpoints/best.pt) or a checkpoint file")
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=0.5, help="flag predictions below this probability")
    parser.add_argument("--json", action="store_true", help="one JSON object per image")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    args = _parser().parse_args(argv)
    try:
        predictor = Predictor(args.run, args.threshold, args.device)
    except HpcbenchError as error:
        fail("hpcbench-predict", str(error), 2)
    failures = 0
    for path in args.images:
        try:
            prediction = predictor.predict_file(path, args.top_k)
        except HpcbenchError as error:
            failures += 1
            print(json.dumps({"image": str(path), "error": str(error)}) if args.json
                  else f"{path}: error: {error}", flush=True)
            continue
        if args.json:
            print(json.dumps({"image": str(path), **prediction.as_dict()}), flush=True)
        else:
            ranked = ", ".join(f"{name} {p:.3f}" for name, p in prediction.top)
            print(f"{path}: {ranked}{'  [uncertain]' if prediction.uncertain else ''}", flush=True)
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
