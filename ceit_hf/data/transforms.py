# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""The recipe's transforms: training augmentation applied with per-example seeds, the evaluation transform, and the
batch mixing (Mixup/CutMix) of the training process."""

from __future__ import annotations


def train_transform(processor, recipe):
    """Training augmentation from torchvision's transforms v2, normalised with the processor's statistics."""
    import torch
    from torchvision.transforms import v2

    size = (processor.crop_size["height"], processor.crop_size["width"])
    bicubic = v2.InterpolationMode.BICUBIC
    steps = [v2.RGB(), v2.RandomResizedCrop(size, scale=(recipe.crop_min_scale, 1.0), interpolation=bicubic)]
    if recipe.hflip:
        steps.append(v2.RandomHorizontalFlip(recipe.hflip))
    if recipe.rand_augment_ops:
        steps.append(v2.RandAugment(recipe.rand_augment_ops, recipe.rand_augment_magnitude, interpolation=bicubic))
    if recipe.color_jitter:
        steps.append(
            v2.ColorJitter(
                brightness=recipe.color_jitter, contrast=recipe.color_jitter, saturation=recipe.color_jitter
            )
        )
    steps += [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(processor.image_mean, processor.image_std),
    ]
    if recipe.random_erasing:
        steps.append(v2.RandomErasing(p=recipe.random_erasing, value="random"))
    return v2.Compose(steps)


def eval_transform(processor):
    def apply(images, indices=None):
        return list(processor([image.convert("RGB") for image in images], return_tensors="pt")["pixel_values"])

    return apply


class SeededAugmentation:
    """Applies a random `transform` to each example with torch's CPU generator seeded from (seed, epoch, example
    index), then restores the generator. An example's augmentation is then a function of those three numbers
    alone, so a resumed run, a prefetching data loader and any number of workers produce the same images.
    `callbacks.EpochCallback` sets `epoch`. (torchvision's transforms draw from the global generator only.)"""

    def __init__(self, transform, seed: int):
        import torch

        self.transform = transform
        self.seed = seed
        # In shared memory: DataLoader workers hold their own copy of this object (persistent ones for the whole
        # run), and read the epoch that the training process sets here.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    @epoch.setter
    def epoch(self, value: int):
        self._epoch.fill_(value)

    def __call__(self, images, indices):
        import torch

        epoch = self.epoch
        out = []
        for image, index in zip(images, indices):
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(hash((self.seed, epoch, int(index))) & 0x7FFF_FFFF_FFFF_FFFF)
                out.append(self.transform(image))
        return out


def batch_mixer(num_labels: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0):
    """torchvision's Mixup and/or CutMix on a training batch (one of them per batch when both are on), or None."""
    from torchvision.transforms import v2

    mixers = [
        mixer(alpha=alpha, num_classes=num_labels)
        for mixer, alpha in ((v2.MixUp, mixup_alpha), (v2.CutMix, cutmix_alpha))
        if alpha > 0
    ]
    if not mixers:
        return None
    return v2.RandomChoice(mixers) if len(mixers) > 1 else mixers[0]
