"""Which images a rank streams in one epoch, and in which order: a pure function of the shard
sizes, (seed, epoch) and (rank, world size), so every rank agrees without talking and a resumed
run reads exactly what the uninterrupted one read.

Training, per epoch (litdata's scheme, on WebDataset shards):
1. the shards are permuted with a generator seeded by (seed, epoch), the same on every rank;
2. the images of the permuted shards, one after the other, are cut into `world_size` equal
   contiguous ranges, one per rank: a rank reads whole shards but at most two it shares with a
   neighbour, and no image is read by two ranks. The last `images mod world_size` images of the
   epoch's order are left out (fewer than the ranks; other ones each epoch): the drop rule;
3. each rank shuffles its range within windows of `window` consecutive images, seeded by
   (seed, epoch, rank): reads stay within a few shards at a time, and a window never needs to be
   in memory because each image is read by its offset when its batch is made.
Evaluation: the split in order, cut into contiguous ranges of sizes differing by at most one.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def used_per_shard(shard_sizes: Sequence[int], limit: int) -> np.ndarray:
    """Images of each shard that a run with the first `limit` images of the split uses."""
    sizes = np.asarray(shard_sizes, dtype=np.int64)
    ends = np.minimum(np.cumsum(sizes), limit)
    return np.diff(np.concatenate([[0], ends])).clip(min=0)


def epoch_positions(used: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """Every used image's position in the split, shards in this epoch's order."""
    starts = np.concatenate([[0], np.cumsum(used)[:-1]])
    order = np.random.default_rng([seed, epoch]).permutation(len(used))
    return np.concatenate([np.arange(starts[s], starts[s] + used[s]) for s in order] or [np.zeros(0, np.int64)])


def rank_train_order(used: np.ndarray, seed: int, epoch: int, rank: int, world_size: int, window: int) -> np.ndarray:
    """The positions rank `rank` trains on in `epoch`, in the order it reads them."""
    positions = epoch_positions(used, seed, epoch)
    per_rank = len(positions) // world_size
    mine = positions[rank * per_rank:(rank + 1) * per_rank].copy()
    generator = np.random.default_rng([seed, epoch, rank, 1])
    for start in range(0, len(mine), window):
        generator.shuffle(mine[start:start + window])
    return mine


def train_images_per_rank(used: np.ndarray, world_size: int) -> int:
    return int(used.sum()) // world_size


def rank_eval_positions(count: int, rank: int, world_size: int) -> np.ndarray:
    """Contiguous, disjoint, together every image once (no padding: all-reduced metrics are exact)."""
    return np.array_split(np.arange(count), world_size)[rank]
