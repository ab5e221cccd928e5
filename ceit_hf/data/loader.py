# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""DataLoader sizing and the official recipe's repeated-augmentation sampler."""

from __future__ import annotations

import math
import os

import torch


def cpus_per_process() -> int:
    """The CPUs this process may use, shared among this machine's training processes (LOCAL_WORLD_SIZE)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def default_num_workers() -> int:
    """Data-loading processes per training process: its CPU share less one for itself (no cap: a GPU outpaces them)."""
    return max(0, cpus_per_process() - 1)


class RepeatedAugmentationSampler(torch.utils.data.Sampler):
    """DeiT's `RASampler`: a permutation from (seed + epoch), each row `repeats` times (keys `row + k * length`) dealt
    to the ranks, `length // 256 * 256 / world_size` each, interleaved batch by batch as accelerate shards them."""

    def __init__(self, length: int, repeats: int = 3, world_size: int = 1, batch_size: int = 1, seed: int = 0):
        sizes = {"length": length, "repeats": repeats, "world_size": world_size, "batch_size": batch_size}
        if min(sizes.values()) < 1:
            raise ValueError(f"RepeatedAugmentationSampler needs positive sizes, got {sizes}.")
        self.length, self.repeats, self.world_size, self.batch_size = length, repeats, world_size, batch_size
        self.seed, self.epoch = seed, 0
        selected = length // 256 * 256 if length >= 256 else length
        self.per_rank = max(1, math.floor(selected / world_size))
        if self.per_rank >= batch_size:  # whole batches, as the official loader (drop_last)
            self.per_rank = self.per_rank // batch_size * batch_size
        elif world_size > 1:
            self.per_rank = batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rank_keys(self, rank: int) -> list[int]:
        """The keys rank `rank` trains on this epoch, in order."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.length, generator=generator).tolist()
        # the official list, padded to a multiple of the world size; a rank whose share is more than one pass (a
        # small dataset padded to whole batches) goes round again with new keys, so new augmentations
        total = max(math.ceil(self.length * self.repeats / self.world_size), self.per_rank) * self.world_size
        keys = []
        for position in range(rank, total, self.world_size):
            cycle, place = divmod(position, self.length * self.repeats)
            row, repeat = divmod(place, self.repeats)
            keys.append(order[row] + (repeat + cycle * self.repeats) * self.length)
        return keys[: self.per_rank]

    def __iter__(self):
        ranks = [self.rank_keys(rank) for rank in range(self.world_size)]
        for start in range(0, self.per_rank, self.batch_size):
            for keys in ranks:
                yield from keys[start : start + self.batch_size]

    def __len__(self) -> int:
        return self.per_rank * self.world_size
