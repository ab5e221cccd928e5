# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""The DataLoader side of a run: how many worker processes decode and augment for each training process, and the
official recipe's repeated-augmentation sampling."""

from __future__ import annotations

import math
import os

import torch


def cpus_per_process() -> int:
    """The CPUs this process may use, shared among the training processes of this machine (torchrun and
    accelerate set LOCAL_WORLD_SIZE)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def default_num_workers() -> int:
    """Data-loading processes per training process: its share of the CPUs less one for the training process itself.
    A worker decodes and augments about 300 ImageNet-size images/s with the official recipe (docs/performance.md:
    `benchmarks/data_loader.py` on a 2-core AMD EPYC), and a GPU trains a CeiT-T at thousands: every available core is
    needed, so there is no cap."""
    return max(0, cpus_per_process() - 1)


def data_loader_defaults(given: dict) -> dict:
    """The DataLoader defaults of `arguments.job_defaults` for the flags `given`: `default_num_workers()` worker
    processes, kept alive from one epoch to the next (torch's prefetch of 2 batches per worker), for own images and
    Hub data.

    None for the bundled digits: their 8x8 images are in memory, and decoding and cropping a batch of them is a
    small part of a step of the small model, while on the small shared CPU the main job is made for (2 cores) a
    worker process would compete with the training process for a core, the contention that its single torch
    thread avoids. (Not timed both ways: the 2-core machine was never quiet enough to compare.)"""
    bundled = "dataset_name" not in given and "train_dir" not in given
    workers = given.get("dataloader_num_workers", 0 if bundled else default_num_workers())
    # DataLoader refuses persistent workers without worker processes
    return {"dataloader_num_workers": workers, "dataloader_persistent_workers": workers > 0}


class RepeatedAugmentationSampler(torch.utils.data.Sampler):
    """The official recipe's sampling (DeiT's `RASampler`): each epoch, a permutation of the `length` rows drawn from
    (seed + epoch), each row taken `repeats` times in a row, padded from its start to a multiple of `world_size`, and
    dealt to the ranks in turn, so that the repeats of a row go to different ranks, each in an augmentation of its
    own. Each rank's epoch is `length // 256 * 256 / world_size` examples (about one pass over the data in all, a
    third of the rows; the whole dataset's length when it has fewer than 256 rows).

    Yields example keys: the k-th repeat of row i is `i + k * length` (`DecodedExamples` reads row `key % length`
    and seeds the augmentation with the key). Built for Trainer's DataLoader, which accelerate shards by batches
    (the b-th batch of `batch_size` keys to rank `b % world_size`): the keys of the ranks are interleaved batch by
    batch so that each rank receives exactly its own list (`rank_keys`), cut to whole batches (the official loader
    drops the last partial one)."""

    def __init__(self, length: int, repeats: int = 3, world_size: int = 1, batch_size: int = 1, seed: int = 0):
        if length < 1 or repeats < 1 or world_size < 1 or batch_size < 1:
            raise ValueError(
                f"RepeatedAugmentationSampler needs a positive length, repeats, world size and batch size; got "
                f"{length}, {repeats}, {world_size}, {batch_size}."
            )
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
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.length, generator=generator).tolist()
        total = math.ceil(self.length * self.repeats / self.world_size) * self.world_size
        keys = []
        for position in range(rank, total, self.world_size):
            cycle, place = divmod(position, self.length * self.repeats)
            row, repeat = divmod(place, self.repeats)
            keys.append(order[row] + (repeat + cycle * self.repeats) * self.length)
        return (keys * math.ceil(self.per_rank / len(keys)))[: self.per_rank]

    def __iter__(self):
        ranks = [self.rank_keys(rank) for rank in range(self.world_size)]
        for start in range(0, self.per_rank, self.batch_size):
            for keys in ranks:
                yield from keys[start : start + self.batch_size]

    def __len__(self) -> int:
        return self.per_rank * self.world_size
