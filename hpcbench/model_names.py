"""The names `model.name` accepts: every torchvision classification architecture (not detection,
segmentation or video), known without importing torchvision when possible.

Importing torchvision costs about 3 seconds of CPU (torchvision.ops pulls in torch._dynamo), and
every config check needs the names: a one-line error for a typo, the process that only starts the
DDP ranks, a sweep's launcher. So the list is kept in a small cache file per installed torchvision
version ($XDG_CACHE_HOME/hpcbench, else ~/.cache/hpcbench), written by the first process that
imports torchvision to compute it. A missing, unreadable or unwritable cache only costs the import.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from typing import Optional, Tuple

from hpcbench.files import atomic_write_json


def cache_file() -> Optional[Path]:
    """None where there is no home to keep it in (a job without HOME): then no cache."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    if not os.path.isabs(root):
        return None
    return Path(root) / "hpcbench" / f"torchvision-{version('torchvision')}-classifiers.json"


@lru_cache(maxsize=1)
def architecture_names() -> Tuple[str, ...]:
    path = cache_file()
    try:
        names = json.loads(path.read_text()) if path else None
        if isinstance(names, list) and names and all(isinstance(name, str) for name in names):
            return tuple(names)
    except (OSError, ValueError):
        pass
    import torchvision

    names = sorted(torchvision.models.list_models(module=torchvision.models))
    try:
        if path:
            atomic_write_json(path, names)
    except OSError:
        pass  # a read-only home: every check imports torchvision, correct but slower
    return tuple(names)
