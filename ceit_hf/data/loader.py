# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""The DataLoader side of a run: how many worker processes decode and augment for each training process."""

from __future__ import annotations

import os


MAX_DEFAULT_WORKERS = 8


def cpus_per_process() -> int:
    """The CPUs this process may use, shared among the training processes of this machine (torchrun and
    accelerate set LOCAL_WORLD_SIZE)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def default_num_workers() -> int:
    """Data-loading processes per training process: its share of the CPUs less one for the training process itself,
    at most `MAX_DEFAULT_WORKERS` (decoding and augmenting rarely needs more to keep a GPU busy)."""
    return max(0, min(MAX_DEFAULT_WORKERS, cpus_per_process() - 1))


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
