# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""The official CeiT/DeiT recipe's transforms from timm's own ops: `train_transform` in the DataLoader workers (uint8,
seeded per example by `SeededAugmentation`), `BatchAugmentation` in the training process. With the same seeds they give
timm's images and batches bit for bit (tests/data/test_recipe.py), but for the posterize guard (`posterize`)."""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image, ImageOps


# The official RandAugment: 2 ops of magnitude 9, noise of std 0.5, increasing-severity posterize and solarize.
OFFICIAL_AUTO_AUGMENT = "rand-m9-mstd0.5-inc1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def posterize(image, bits_to_keep, **_):
    """timm's posterize, giving for 0 bits (which timm's `inc1` can ask for) what Pillow gave before Pillow 13, a
    black image (the image the official runs saw), instead of Pillow 13's ValueError mid-epoch."""
    if bits_to_keep >= 8:
        return image
    return ImageOps.posterize(image, bits_to_keep) if bits_to_keep > 0 else Image.new(image.mode, image.size)


def rand_augment(config: str, image_size: int, mean=IMAGENET_MEAN):
    """timm's RandAugment as its `create_transform` builds it for `image_size`, with our `posterize`."""
    from timm.data import auto_augment

    fill = tuple(min(255, round(255 * x)) for x in mean)
    hparams = {"translate_const": int(image_size * 0.45), "img_mean": fill, "interpolation": Image.BICUBIC}
    transform = auto_augment.rand_augment_transform(config, hparams)
    for op in transform.ops:
        if op.aug_fn is auto_augment.posterize:
            op.aug_fn = posterize
    return transform


def to_uint8_tensor(image) -> torch.Tensor:
    """A PIL image as a (C, H, W) uint8 tensor (normalised in the training process)."""
    return torch.from_numpy(np.atleast_3d(np.array(image))).permute(2, 0, 1)


def rgb(image):
    return image if image.mode == "RGB" else image.convert("RGB")


def train_transform(
    image_size: int | tuple[int, int],
    crop_min_scale: float = 0.08,
    hflip: float = 0.5,
    auto_augment: str | None = None,
    color_jitter: float = 0.0,
    mean=IMAGENET_MEAN,
):
    """The worker side of the training augmentation, as timm's `create_transform(..., use_prefetcher=True)` (uint8
    out), but for colour jitter, which timm leaves out under RandAugment and which is applied here when asked for."""
    from timm.data.transforms import RandomResizedCropAndInterpolation
    from torchvision import transforms

    steps = [rgb, RandomResizedCropAndInterpolation(image_size, scale=(crop_min_scale, 1.0), interpolation="bicubic")]
    if hflip > 0:
        steps.append(transforms.RandomHorizontalFlip(p=hflip))
    if auto_augment:
        size = min(image_size) if isinstance(image_size, (tuple, list)) else image_size
        steps.append(rand_augment(auto_augment, size, mean))
    if color_jitter > 0:
        steps.append(transforms.ColorJitter(color_jitter, color_jitter, color_jitter))
    steps.append(to_uint8_tensor)
    return transforms.Compose(steps)


def eval_transform(processor):
    """The evaluation transform: the image processor's (resize, centre crop, normalised float)."""
    return lambda images, keys=None: list(processor(list(map(rgb, images)), return_tensors="pt")["pixel_values"])


class SeededAugmentation:
    """Applies `transform` to each example with the global generators (which timm's and torchvision's ops use) seeded
    from (seed, epoch, key), then restored: the same images with any number of workers and after a resume."""

    def __init__(self, transform, seed: int):
        self.transform, self.seed = transform, seed
        # shared memory: (persistent) DataLoader workers hold copies of this object and read the epoch set here
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    @epoch.setter
    def epoch(self, value: int):
        self._epoch.fill_(value)

    def __call__(self, images, keys):
        epoch, out = self.epoch, []
        python_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                for image, key in zip(images, keys):
                    seed = hash((self.seed, epoch, int(key))) & 0x7FFF_FFFF_FFFF_FFFF
                    random.seed(seed)
                    np.random.seed(seed & 0xFFFF_FFFF)
                    torch.default_generator.manual_seed(seed)
                    out.append(self.transform(image))
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
        return out


class BatchMixing:
    """timm's `Mixup` in "batch" mode, as the official recipe applies it, also to an odd batch (timm's refuses
    one; its middle image mixes with itself). Targets are soft, with `label_smoothing` folded in as timm does."""

    def __init__(self, num_labels: int, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.0):
        from timm.data.mixup import Mixup

        # Mixup or CutMix (switching with probability 0.5), one λ per batch, each image mixed with the batch reversed
        self.mixup = Mixup(
            mixup_alpha, cutmix_alpha, mode="batch", label_smoothing=label_smoothing, num_classes=num_labels
        )

    def __call__(self, pixel_values, labels):
        from timm.data.mixup import mixup_target

        lam = self.mixup._mix_batch(pixel_values)  # in place, as timm's
        return pixel_values, mixup_target(labels, self.mixup.num_classes, lam, self.mixup.label_smoothing)


def batch_mixer(num_labels: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, label_smoothing: float = 0.0):
    """`BatchMixing` when Mixup or CutMix is on, else None."""
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return None
    return BatchMixing(num_labels, mixup_alpha, cutmix_alpha, label_smoothing)


class BatchAugmentation:
    """The training process's side: normalisation (of uint8), random erasing (pixel mode), then `mix`."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, random_erasing: float = 0.0, mix=None):
        self.mean = torch.tensor([255 * m for m in mean]).view(1, -1, 1, 1)
        self.std = torch.tensor([255 * s for s in std]).view(1, -1, 1, 1)
        self.random_erasing, self.mix = random_erasing, mix

    def normalize(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.dtype != torch.uint8:
            return pixel_values
        return pixel_values.float().sub_(self.mean.to(pixel_values.device)).div_(self.std.to(pixel_values.device))

    def __call__(self, pixel_values: torch.Tensor, labels: torch.Tensor):
        from timm.data.random_erasing import RandomErasing

        pixel_values = self.normalize(pixel_values)
        if self.random_erasing > 0:
            erase = RandomErasing(self.random_erasing, mode="pixel", max_count=1, device=pixel_values.device)
            pixel_values = erase(pixel_values)
        if self.mix is not None:
            pixel_values, labels = self.mix(pixel_values, labels)
        return pixel_values, labels
