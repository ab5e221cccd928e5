# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""The recipe's transforms, split where timm's training script splits them:

- in the DataLoader workers, `train_transform`: the official CeiT/DeiT training augmentation built from timm's own
  ops (bicubic RandomResizedCrop, horizontal flip, RandAugment `rand-m9-mstd0.5-inc1`), handing over uint8 images
  (a quarter of float32's bytes through the workers' shared memory and the host-to-device copy), applied per example
  with seeds of its own (`SeededAugmentation`);
- in the training process, on the device the batch trains on, `BatchAugmentation`: normalisation, random erasing
  (pixel mode) and Mixup/CutMix, as timm's `PrefetchLoader` and training loop do them.

With the same seeds, `train_transform` gives timm's `create_transform(..., use_prefetcher=True)` images bit for bit
and `BatchAugmentation` gives its prefetcher's and Mixup's batches (tests/data/test_recipe.py). One difference is on
purpose: timm's `inc1` posterize can ask Pillow for 0 bits, which Pillow 13 refuses mid-epoch; here it gives what
Pillow did before (a black image), the image the official runs saw.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image, ImageOps


# The official recipe's RandAugment (timm's config string): 2 ops of magnitude 9 with noise of std 0.5, the
# increasing-severity variants of posterize and solarize.
OFFICIAL_AUTO_AUGMENT = "rand-m9-mstd0.5-inc1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def posterize(image, bits_to_keep, **_):
    """timm's posterize, with Pillow's behaviour before Pillow 13 for 0 bits (a black image) instead of its
    ValueError."""
    if bits_to_keep >= 8:
        return image
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size)
    return ImageOps.posterize(image, bits_to_keep)


def rand_augment(config: str, image_size: int, mean=IMAGENET_MEAN):
    """timm's RandAugment for the timm config string `config` (e.g. `OFFICIAL_AUTO_AUGMENT`) as timm's
    `create_transform` builds it for `image_size` (bicubic, translations up to 45% of the size, the fill colour the
    mean), with `posterize` in place of timm's."""
    from timm.data import auto_augment

    hparams = {
        "translate_const": int(image_size * 0.45),
        "img_mean": tuple(min(255, round(255 * x)) for x in mean),
        "interpolation": Image.BICUBIC,
    }
    transform = auto_augment.rand_augment_transform(config, hparams)
    for op in transform.ops:
        if op.aug_fn is auto_augment.posterize:
            op.aug_fn = posterize
    return transform


def to_uint8_tensor(image) -> torch.Tensor:
    """A PIL image as a (C, H, W) uint8 tensor, its values as they are (normalised in the training process)."""
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


def rgb(image):
    """`image` in RGB (already RGB: itself, not a copy as `convert` makes)."""
    return image if image.mode == "RGB" else image.convert("RGB")


def train_transform(
    image_size: int | tuple[int, int],
    crop_min_scale: float = 0.08,
    hflip: float = 0.5,
    auto_augment: str | None = None,
    color_jitter: float = 0.0,
    mean=IMAGENET_MEAN,
):
    """The worker side of the training augmentation: RGB, bicubic RandomResizedCrop to `image_size` (area scale
    `crop_min_scale` to 1, aspect 3/4 to 4/3), horizontal flip with probability `hflip`, timm's RandAugment
    `auto_augment` (`rand_augment`), colour jitter of strength `color_jitter` (brightness, contrast, saturation;
    timm leaves it out whenever RandAugment is on, and so does the official recipe: here it is applied when asked
    for), then a uint8 tensor. timm's op classes, in timm's order: with the same seeds of `random`, numpy and torch,
    the same images as timm's `create_transform(..., use_prefetcher=True)`."""
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
    """The evaluation transform: the image processor's (official resize-then-crop, normalised float)."""

    def apply(images, indices=None):
        return list(processor([image.convert("RGB") for image in images], return_tensors="pt")["pixel_values"])

    return apply


class SeededAugmentation:
    """Applies a random `transform` to each example with Python's `random`, numpy's and torch's CPU generators
    seeded from (seed, epoch, example key), and restores the generators after it. An example's augmentation is then
    a function of those three numbers alone, so a resumed run, a prefetching data loader and any number of workers
    produce the same images. The key of an example is its row index, or, under repeated augmentation, the index of
    its occurrence in the epoch (`loader.RepeatedAugmentationSampler`): each repeat is augmented differently.
    `callbacks.EpochCallback` sets `epoch`. (timm's and torchvision's ops draw from the global generators only.)"""

    def __init__(self, transform, seed: int):
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

    def __call__(self, images, keys):
        epoch = self.epoch
        out = []
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
    """timm's `Mixup` in its "batch" mode (one λ per batch; Mixup or CutMix, switching with probability
    `switch_prob`; each image mixed with the batch reversed), as the official recipe applies it, also to an odd
    batch (whose middle image mixes with itself: timm's refuses odd batches). Targets are soft (mixed one-hot, with
    `label_smoothing` folded in as timm does)."""

    def __init__(self, num_labels: int, mixup_alpha=0.0, cutmix_alpha=0.0, switch_prob=0.5, label_smoothing=0.0):
        from timm.data.mixup import Mixup

        self.mixup = Mixup(
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            switch_prob=switch_prob,
            mode="batch",
            label_smoothing=label_smoothing,
            num_classes=num_labels,
        )

    def __call__(self, pixel_values, labels):
        from timm.data.mixup import mixup_target

        lam = self.mixup._mix_batch(pixel_values)  # in place, as timm's
        return pixel_values, mixup_target(labels, self.mixup.num_classes, lam, self.mixup.label_smoothing)


def batch_mixer(num_labels: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, label_smoothing: float = 0.0):
    """`BatchMixing` when Mixup or CutMix is on, else None."""
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return None
    return BatchMixing(num_labels, mixup_alpha, cutmix_alpha, label_smoothing=label_smoothing)


class BatchAugmentation:
    """The training process's side of the recipe, on the batch's device: uint8 images normalised with `mean`/`std`
    (the `PrefetchLoader` of timm's training script: `(x - 255 mean) / (255 std)`), then timm's `RandomErasing` with
    probability `random_erasing` in pixel mode (each erased pixel normal noise), then `mix` (`BatchMixing` or None).
    A float batch is taken as normalised already (images that did not come through `train_transform`)."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, random_erasing: float = 0.0, mix=None):
        self.mean = torch.tensor([255 * m for m in mean]).view(1, -1, 1, 1)
        self.std = torch.tensor([255 * s for s in std]).view(1, -1, 1, 1)
        self.random_erasing, self.mix = random_erasing, mix

    def normalize(self, pixel_values: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        if pixel_values.dtype != torch.uint8:
            return pixel_values
        device = pixel_values.device
        mean, std = self.mean.to(device, dtype), self.std.to(device, dtype)
        return pixel_values.to(dtype).sub_(mean).div_(std)

    def __call__(self, pixel_values: torch.Tensor, labels: torch.Tensor):
        from timm.data.random_erasing import RandomErasing

        pixel_values = self.normalize(pixel_values)
        if self.random_erasing > 0:
            erase = RandomErasing(self.random_erasing, mode="pixel", max_count=1, device=pixel_values.device)
            pixel_values = erase(pixel_values)
        if self.mix is not None:
            pixel_values, labels = self.mix(pixel_values, labels)
        return pixel_values, labels
