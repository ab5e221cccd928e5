# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""The data of a training run: the bundled digits, image folders or a Hub dataset as a `DatasetDict` with `train`
and `validation` splits, checked before any training (bad folders fail with one line saying what was expected), and
the torchvision transforms v2 recipe applied on the fly with per-example seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .arguments import DataArguments, ModelArguments, RecipeArguments


DIGITS_IMAGE_SIZE = 32
INDEX_COLUMN = "__example_index__"


def digits_dataset(seed: int = 0):
    """scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, 10 classes) as a `DatasetDict` with a
    stratified 80/20 train/validation split: the offline default data of the main job."""
    import datasets
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [Image.fromarray((img * 255 / 16).round().astype(np.uint8), mode="L") for img in digits.images]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(10)])}
    )
    full = datasets.Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features)
    split = full.train_test_split(test_size=0.2, stratify_by_column="label", seed=seed)
    return datasets.DatasetDict(train=split["train"], validation=split["test"])


def check_image_folder(folder: str, flag: str) -> None:
    """Fails with one line naming `folder` unless it is an `imagefolder` layout (a sub-folder of images per class,
    every image readable). Reading each file's header with Pillow is cheap next to decoding it in training."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
    from PIL import Image, UnidentifiedImageError

    expected = f"expected one sub-folder of images per class ({folder}/<class>/<image>)"
    path = Path(folder)
    if not path.exists():
        raise SystemExit(f"error: {flag} {folder!r} does not exist: {expected}.")
    if not path.is_dir():
        raise SystemExit(f"error: {flag} {folder!r} is not a folder: {expected}.")
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    classes = sorted(p for p in entries if p.is_dir())
    if not entries:
        raise SystemExit(f"error: {flag} {folder!r} is empty: {expected}.")
    if not classes:
        raise SystemExit(f"error: {flag} {folder!r} has no class sub-folders ({len(entries)} files directly in it): {expected}.")
    unreadable = []
    for class_dir in classes:
        images = [p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in ImageFolder.EXTENSIONS]
        if not images:
            raise SystemExit(
                f"error: {flag} {folder!r}: the class folder {class_dir.name!r} holds no images (expected files such "
                "as .png or .jpg)."
            )
        for image in images:
            try:
                Image.open(image).close()
            except (OSError, UnidentifiedImageError):
                unreadable.append(str(image.relative_to(path)))
    if unreadable:
        names = ", ".join(unreadable[:5]) + (f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else "")
        raise SystemExit(f"error: {flag} {folder!r}: {len(unreadable)} file(s) are not readable images: {names}.")


def load_image_datasets(data_args: DataArguments, model_args: ModelArguments, seed: int):
    """The train and validation splits, from the Hub, image folders, or the bundled digits."""
    import datasets

    if data_args.dataset_name is not None:
        raw = datasets.load_dataset(
            data_args.dataset_name, data_args.dataset_config_name, cache_dir=model_args.cache_dir,
            token=model_args.token, trust_remote_code=model_args.trust_remote_code,
        )
    elif data_args.train_dir is not None:
        data_files = {}
        for split, flag, folder in (("train", "--train_dir", data_args.train_dir),
                                    ("validation", "--validation_dir", data_args.validation_dir)):
            if folder is not None:
                check_image_folder(folder, flag)
                data_files[split] = str(Path(folder) / "**")
        raw = datasets.load_dataset("imagefolder", data_files=data_files, cache_dir=model_args.cache_dir)
    else:
        raw = digits_dataset(seed=0)

    if "train" not in raw:
        raise SystemExit(f"error: the dataset has no 'train' split (splits: {list(raw)}).")
    for column in (data_args.image_column_name, data_args.label_column_name):
        if column not in raw["train"].column_names:
            raise SystemExit(
                f"error: column {column!r} is not in the dataset (columns: {raw['train'].column_names}); pass "
                "--image_column_name / --label_column_name."
            )
    if "validation" not in raw:
        validation = next((s for s in ("val", "valid", "test") if s in raw), None)
        if validation is not None:
            raw["validation"] = raw.pop(validation)
        else:
            stratify = isinstance(raw["train"].features[data_args.label_column_name], datasets.ClassLabel)
            split = raw["train"].train_test_split(
                test_size=data_args.train_val_split, seed=seed,
                stratify_by_column=data_args.label_column_name if stratify else None,
            )
            raw["train"], raw["validation"] = split["train"], split["test"]
    if data_args.max_train_samples is not None:
        raw["train"] = raw["train"].shuffle(seed=seed).select(range(min(data_args.max_train_samples, len(raw["train"]))))
    if data_args.max_eval_samples is not None:
        raw["validation"] = raw["validation"].select(range(min(data_args.max_eval_samples, len(raw["validation"]))))
    return raw


def label_names(dataset, label_column: str) -> list[str]:
    """Class names from a `ClassLabel` column, else the sorted distinct label values."""
    import datasets

    feature = dataset.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    values = sorted(set(dataset[label_column]))
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values) or values != list(range(len(values))):
        raise ValueError(
            f"Labels of column {label_column!r} must be a ClassLabel or the integers 0..K-1; got {values[:10]}."
        )
    return [str(v) for v in values]


def check_labels(dataset, label_column: str, num_labels: int, split: str):
    """Refuses labels outside `[0, num_labels)`, which would otherwise crash mid-run or train silently wrong."""
    labels = np.asarray(dataset[label_column])
    if labels.size and (labels.min() < 0 or labels.max() >= num_labels):
        bad = sorted({int(v) for v in labels if v < 0 or v >= num_labels})[:10]
        raise ValueError(
            f"The {split} split has labels {bad} outside the model's {num_labels} classes (id2label 0..{num_labels - 1})."
        )


def choose_image_size(model_args: ModelArguments, data_args: DataArguments, train, samples: int = 64) -> int | None:
    """The crop size of a model trained from scratch: `--image_size`, 32 for the digits, else the median shorter
    side of some training images rounded to a multiple of 16 (what the default stem and patch need), 32 to 224.
    None for pretrained models and presets (their own size)."""
    if model_args.image_size is not None or model_args.model_name_or_path or model_args.preset:
        return model_args.image_size
    if data_args.bundled:
        return DIGITS_IMAGE_SIZE
    column = data_args.image_column_name
    sides = [min(train[i][column].size) for i in range(min(samples, len(train)))]
    side = int(np.median(sides)) if sides else 224
    return int(min(224, max(32, round(side / 16) * 16)))


# ------------------------------------------------------------------------------------------------- transforms


def train_transform(processor, recipe: RecipeArguments):
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
        steps.append(v2.ColorJitter(brightness=recipe.color_jitter, contrast=recipe.color_jitter,
                                    saturation=recipe.color_jitter))
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(processor.image_mean, processor.image_std)]
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
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def __call__(self, images, indices):
        import torch

        out = []
        for image, index in zip(images, indices):
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(hash((self.seed, self.epoch, int(index))) & 0x7FFF_FFFF_FFFF_FFFF)
                out.append(self.transform(image))
        return out


def with_transform(dataset, image_column: str, label_column: str, transform):
    """`dataset` yielding `pixel_values` and `labels` (what `default_data_collator` stacks), transformed on the fly;
    `transform` receives the batch's images and their row indices."""
    dataset = dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))

    def apply(batch):
        return {"pixel_values": transform(batch[image_column], batch[INDEX_COLUMN]), "labels": batch[label_column]}

    dataset.set_transform(apply)
    return dataset


def batch_mixer(num_labels: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0):
    """torchvision's Mixup and/or CutMix on a training batch (one of them per batch when both are on), or None."""
    from torchvision.transforms import v2

    mixers = [mixer(alpha=alpha, num_classes=num_labels)
              for mixer, alpha in ((v2.MixUp, mixup_alpha), (v2.CutMix, cutmix_alpha)) if alpha > 0]
    if not mixers:
        return None
    return v2.RandomChoice(mixers) if len(mixers) > 1 else mixers[0]
