"""Writing files others read while they are being written: run directories, reports, manifests,
decode caches.

Every write goes to a temporary file beside the target, is fsynced and renamed over it, so a
reader (the report, `hpcbench-status`, a resumed run) never sees half a file. The temporary file
gets the permissions a plain `open()` would give (0666 minus the umask): on a cluster's shared file
system the project group and a web server must be able to read what a run wrote.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional


def current_umask() -> int:
    """The process umask, read without changing it (Linux keeps it in /proc/self/status)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # not thread-safe, hence only the fallback
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes, keep_previous: Optional[Path] = None) -> None:
    """Write a temporary file beside `path`, fsync it, rename it over `path`. With
    `keep_previous`, the old `path` is first renamed there: at every moment one complete
    version exists under one of the two names."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600 whatever the umask
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def torch_bytes(state: Any) -> bytes:
    """What torch.save writes, as bytes (for atomic_write_bytes)."""
    import torch  # lazy: the report and the Slurm status tool write files without torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()
