# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Images per second that DataLoader worker processes deliver with the training pipeline of `ceit_hf.data` (the
official recipe's worker side) on synthetic ImageNet-size JPEGs, per worker count: the figure that turns a GPU's
training speed into data-loader cores (`benchmarks/benchmark.py`, first in a full run; the GPU report)."""

from __future__ import annotations

import io
import time

from benchmarks.common import (
    available_cpus,
)


# ImageNet-1k's training images average about 400x350 pixels and 110 KB as JPEG; 500x375 is its most common size.
IMAGENET_LIKE_SIZE = (500, 375)


def synthetic_jpegs(count: int, size: tuple[int, int] = IMAGENET_LIKE_SIZE, quality: int = 93, seed: int = 0):
    """`count` JPEG files (bytes) of `size` (width, height), encoded once in memory. Smooth random colour fields with
    fine noise, about 105 KiB each at 500x375: they compress and decode like photographs (pure noise would be several
    times the bytes and slower to decode, flat images far faster)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size
    files = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (height // 12 + 2, width // 12 + 2, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32)
        pixels = np.clip(smooth + rng.normal(0.0, 12.0, smooth.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
        files.append(buffer.getvalue())
    return files


def training_pipeline_dataset(jpegs: list[bytes], image_size: int = 224, seed: int = 0):
    """`jpegs` as the training job sees its data under `--recipe deit`: a `datasets` image column decoded on access,
    and the official recipe's worker side (`train_transform`: bicubic RandomResizedCrop to
    `image_size`, flip, RandAugment rand-m9-mstd0.5-inc1, uint8 out) through `SeededAugmentation` and
    `with_transform`. Normalisation, random erasing and Mixup/CutMix run on the training process's batch, not in
    the loader."""
    import datasets

    from ceit_hf.data.decoding import with_transform
    from ceit_hf.data.transforms import OFFICIAL_AUTO_AUGMENT, SeededAugmentation, train_transform

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=1000)})
    dataset = datasets.Dataset.from_dict(
        {"image": [{"bytes": data, "path": None} for data in jpegs], "label": [i % 1000 for i in range(len(jpegs))]},
        features=features,
    )
    transform = train_transform(image_size, auto_augment=OFFICIAL_AUTO_AUGMENT)
    return with_transform(dataset, "image", "label", SeededAugmentation(transform, seed))


def loader_images_per_second(dataset, workers: int, batch_size: int, seconds: float) -> float:
    """Images per second that a `DataLoader` with `workers` worker processes delivers from `dataset` (batches of
    `batch_size`, random order with replacement, `default_data_collator` as Trainer uses). Timed after the first
    3 x `workers` batches: the workers' start and the batches they prefetch meanwhile stay out of the figure."""
    from torch.utils.data import DataLoader, RandomSampler
    from transformers import default_data_collator

    sampler = RandomSampler(dataset, replacement=True, num_samples=2**31 - 1)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=default_data_collator,
        prefetch_factor=2 if workers else None,
    )
    batches = iter(loader)
    try:
        for _ in range(3 * max(workers, 1)):
            next(batches)
        images, start = 0, time.perf_counter()
        while images == 0 or time.perf_counter() - start < seconds:
            images += len(next(batches)["labels"])
        return images / (time.perf_counter() - start)
    finally:
        del batches  # shuts the workers down


def data_loader_throughput(
    workers=(1, None),
    images: int = 64,
    batch_size: int = 32,
    seconds: float = 5.0,
    image_size: int = 224,
    source_size: tuple[int, int] = IMAGENET_LIKE_SIZE,
    log=print,
) -> dict:
    """The training pipeline's throughput (decode + DeiT-recipe augmentation of synthetic ImageNet-like JPEGs) with
    each worker count in `workers` (None: every available CPU), as images/s in all and per worker. A GPU training at
    X images/s needs about X / `per_worker_images_per_second` workers (one CPU core each)."""
    jpegs = synthetic_jpegs(images, source_size)
    dataset = training_pipeline_dataset(jpegs, image_size)
    counts = list(dict.fromkeys(w or available_cpus() for w in workers))
    runs = {}
    for count in counts:
        rate = loader_images_per_second(dataset, count, batch_size, seconds)
        runs[str(count)] = {"images_per_second": rate, "per_worker_images_per_second": rate / count}
        log(f"[data loader] {count} worker(s): {rate:.0f} images/s, {rate / count:.0f} per worker")
    return {
        "source_size": list(source_size),
        "jpeg_kib_mean": sum(map(len, jpegs)) / len(jpegs) / 1024,
        "image_size": image_size,
        "batch_size": batch_size,
        "distinct_images": len(jpegs),
        "cpus": available_cpus(),
        "pipeline": "datasets Image decode + train_transform(rand-m9-mstd0.5-inc1, uint8) per example",
        "workers": runs,
        # the lowest per-worker rate: with many workers they share memory bandwidth and caches
        "per_worker_images_per_second": min(run["per_worker_images_per_second"] for run in runs.values()),
    }


def format_data_loader(loader: dict) -> list[str]:
    """The data-loader measurement as Markdown lines: a sentence and one table row per worker count."""
    width, height = loader["source_size"]
    lines = [
        f"Data loader ({loader['pipeline']}): {width}x{height} JPEGs of {loader['jpeg_kib_mean']:.0f} KiB to "
        f"{loader['image_size']}x{loader['image_size']}, batch {loader['batch_size']}, {loader['cpus']} CPUs; "
        f"{loader['per_worker_images_per_second']:.0f} images/s per worker: a training at X images/s needs about "
        f"X / {loader['per_worker_images_per_second']:.0f} workers.",
        "",
        "| workers | images/s | per worker |",
        "|---|---|---|",
    ]
    for count, run in loader["workers"].items():
        lines.append(f"| {count} | {run['images_per_second']:.0f} | {run['per_worker_images_per_second']:.0f} |")
    return lines
