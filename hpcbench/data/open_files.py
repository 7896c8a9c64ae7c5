"""Open files under a site's descriptor limit: ImageNet packed at 1,000 images per shard is 1,282
train shards, and the common soft limit (`ulimit -n`) on cluster nodes is 1,024, per process,
counted in every DataLoader worker (a forked worker inherits its parent's descriptors too).

`raise_open_file_limit` lifts the soft limit to the hard one, which any process may do, once at
start. `OpenFiles` keeps at most `capacity` shard files open per reader and process, closing the
least recently read one first: a rank reads its images shard after shard (windows of
`data.shuffle_window` images span a few shards), so a few dozen open files serve it as well as
all of them would.
"""
from __future__ import annotations

import os
import resource
from collections import OrderedDict
from typing import Dict, Sequence, Tuple

# A reader may hold this share of the soft limit, and never more than MAX_OPEN_PER_READER: a
# process has two readers (train, test) besides torch's own files, sockets and shared memory.
SHARE_OF_LIMIT = 16
MAX_OPEN_PER_READER = 64
MIN_OPEN_PER_READER = 2


def raise_open_file_limit() -> Tuple[int, int]:
    """Raise this process's soft limit on open files to its hard limit; returns (before, now)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # a hard limit above the kernel's nr_open: keep what we have
            return soft, soft
        return soft, hard
    return soft, soft


def open_files_per_reader() -> int:
    """How many shard files one reader keeps open, from the soft limit as it is now."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return MAX_OPEN_PER_READER
    return max(MIN_OPEN_PER_READER, min(MAX_OPEN_PER_READER, soft // SHARE_OF_LIMIT))


class OpenFiles:
    """Read-only descriptors of `paths`, opened on first read, at most `capacity` at a time (the
    least recently used is closed). Reads are `pread`s: no shared file position, so forked
    DataLoader workers may use descriptors they inherited. A pickled copy (a worker started by
    spawn or forkserver) opens its own."""

    def __init__(self, paths: Sequence[str], capacity: int):
        self.paths, self.capacity = list(paths), capacity
        self._open: Dict[int, int] = OrderedDict()  # file number -> descriptor, least recent first

    def pread(self, number: int, length: int, offset: int) -> bytes:
        descriptor = self._open.pop(number, None)
        if descriptor is None:
            while len(self._open) >= self.capacity:
                os.close(self._open.pop(next(iter(self._open))))
            descriptor = os.open(self.paths[number], os.O_RDONLY | os.O_CLOEXEC)
        self._open[number] = descriptor  # now the most recent
        return os.pread(descriptor, length, offset)

    def __len__(self) -> int:
        return len(self._open)

    def close(self) -> None:
        while self._open:
            os.close(self._open.popitem()[1])

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass

    def __getstate__(self):
        return {**self.__dict__, "_open": OrderedDict()}
