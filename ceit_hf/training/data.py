# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""The data of a training run: the bundled digits, image folders or a Hub dataset as a `DatasetDict` with `train`
and `validation` splits, checked before any training (bad folders fail with one line saying what was expected,
small ones are decoded in full), images decoded by the transform itself (a file that fails is named, then skipped
or stopped on), the torchvision transforms v2 recipe applied on the fly with per-example seeds, and the default
number of DataLoader workers."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .arguments import DataArguments, ModelArguments, RecipeArguments


logger = logging.getLogger("ceit_hf.training")
DIGITS_IMAGE_SIZE = 32
INDEX_COLUMN = "__example_index__"
BAD_IMAGE_POLICIES = ("skip", "stop")
# What Pillow raises for a file that is no image, is damaged or truncated (SyntaxError: "broken PNG file"), or
# too large to be safe.
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
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


def digits_dataset(seed: int = 0):
    """scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, 10 classes) as a `DatasetDict` with a
    stratified 80/20 train/validation split: the offline default data of the main job."""
    import datasets
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [Image.fromarray((img * 255 / 16).round().astype(np.uint8), mode="L") for img in digits.images]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(10)])}
    )
    full = datasets.Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features)
    split = full.train_test_split(test_size=0.2, stratify_by_column="label", seed=seed)
    return datasets.DatasetDict(train=split["train"], validation=split["test"])


def check_image_folder(folder: str, flag: str, decode_limit: int = 0) -> None:
    """Fails with one line naming `folder` unless it is an `imagefolder` layout (a sub-folder of images per class,
    every image readable). A folder of at most `decode_limit` images is decoded in full (a truncated file has a
    valid header); a larger one only has each file's header read with Pillow, cheap next to decoding it in training
    (where `--bad_image_policy` handles the files that fail)."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

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
        raise SystemExit(
            f"error: {flag} {folder!r} has no class sub-folders ({len(entries)} files directly in it): {expected}."
        )
    files = []
    for class_dir in classes:
        images = sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in ImageFolder.EXTENSIONS)
        if not images:
            raise SystemExit(
                f"error: {flag} {folder!r}: the class folder {class_dir.name!r} holds no images (expected files such "
                "as .png or .jpg)."
            )
        files += images
    decode = len(files) <= decode_limit
    if decode:
        logger.info(
            "Decoding the %d images of %s to check them (--verify_images_limit %d)", len(files), folder, decode_limit
        )
    unreadable = [str(image.relative_to(path)) for image in unreadable_images(files, decode)]
    if unreadable:
        names = ", ".join(unreadable[:5]) + (f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else "")
        raise SystemExit(f"error: {flag} {folder!r}: {len(unreadable)} file(s) are not readable images: {names}.")


def unreadable_images(files: list[Path], decode: bool) -> list[Path]:
    """The `files` Pillow cannot decode (`decode`) or whose header it cannot read. In threads: Pillow reads and
    decodes without holding the GIL."""
    from concurrent.futures import ThreadPoolExecutor

    def fails(file: Path) -> bool:
        try:
            with Image.open(file) as image:
                if decode:
                    image.load()
        except IMAGE_ERRORS:
            return True
        return False

    with ThreadPoolExecutor(max(1, cpus_per_process())) as pool:
        return [file for file, failed in zip(files, pool.map(fails, files)) if failed]


def load_image_datasets(data_args: DataArguments, model_args: ModelArguments, seed: int):  # noqa: C901 (a branch per data source)
    """The train and validation splits, from the Hub, image folders, or the bundled digits."""
    import datasets

    check_bad_image_policy(data_args.bad_image_policy)
    if data_args.dataset_name is not None:
        raw = datasets.load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            cache_dir=model_args.cache_dir,
            token=model_args.token,
            trust_remote_code=model_args.trust_remote_code,
        )
    elif data_args.train_dir is not None:
        data_files = {}
        for split, flag, folder in (
            ("train", "--train_dir", data_args.train_dir),
            ("validation", "--validation_dir", data_args.validation_dir),
        ):
            if folder is not None:
                check_image_folder(folder, flag, decode_limit=data_args.verify_images_limit)
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
                test_size=data_args.train_val_split,
                seed=seed,
                stratify_by_column=data_args.label_column_name if stratify else None,
            )
            raw["train"], raw["validation"] = split["train"], split["test"]
    if data_args.max_train_samples is not None:
        kept = min(data_args.max_train_samples, len(raw["train"]))
        raw["train"] = raw["train"].shuffle(seed=seed).select(range(kept))
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
            f"The {split} split has labels {bad} outside the model's {num_labels} classes "
            f"(id2label 0..{num_labels - 1})."
        )


def choose_image_size(model_args: ModelArguments, data_args: DataArguments, train, samples: int = 64) -> int | None:
    """The crop size of a model trained from scratch: `--image_size`, 32 for the digits, else the median shorter
    side of some training images rounded to a multiple of 16 (what the default stem and patch need), 32 to 224.
    None for pretrained models and presets (their own size). Images that fail to decode are left out."""
    if model_args.image_size is not None or model_args.model_name_or_path or model_args.preset:
        return model_args.image_size
    if data_args.bundled:
        return DIGITS_IMAGE_SIZE
    column = data_args.image_column_name
    feature = train.features[column]
    sample = undecoded(train.select(range(min(samples, len(train)))), column)
    sides = []
    for value in sample[column]:
        try:
            sides.append(min(decode_image(value, feature).size))
        except BadImageError as error:
            logger.warning("Leaving %s out of the image size choice: %s", error.name, error.reason)
    side = int(np.median(sides)) if sides else 224
    return int(min(224, max(32, round(side / 16) * 16)))


# ---------------------------------------------------------------------------------------------------- decoding


class BadImageError(Exception):
    """An image that fails to decode, named. A DataLoader worker hands it to the training process, which raises it
    again with the worker's traceback as the message: the constructor keeps the one `error:` line of it
    (`run.main` ends the command line with that line, as the other data errors)."""

    def __init__(self, message: str, name: str | None = None, reason: str | None = None):
        last = next((line for line in reversed(message.splitlines()) if "error: " in line), message)
        super().__init__(last[last.find("error: ") :])
        self.name, self.reason = name, reason


def check_bad_image_policy(policy: str) -> None:
    if policy not in BAD_IMAGE_POLICIES:
        raise SystemExit(f"error: --bad_image_policy must be one of {BAD_IMAGE_POLICIES}, got {policy!r}.")


def undecoded(dataset, column: str):
    """`dataset` with its `datasets.Image` column left undecoded ({'bytes', 'path'}): `decode_image` decodes it."""
    import datasets

    feature = dataset.features[column]
    if not isinstance(feature, datasets.Image) or not feature.decode:
        return dataset
    return dataset.cast_column(column, datasets.Image(mode=feature.mode, decode=False))


def decode_image(value, feature):
    """The image `value` of a column of type `feature` decoded in full as `datasets` would, or `BadImageError`
    naming its file (or its row's bytes). Values of other columns (already images) are returned as they are."""
    import datasets

    if not isinstance(feature, datasets.Image) or not isinstance(value, dict):
        return value
    try:
        return feature.decode_example(value)
    except IMAGE_ERRORS as error:
        name = value.get("path") or f"an image of {len(value.get('bytes') or b'')} bytes"
        reason = f"{type(error).__name__}: {error}"
        raise BadImageError(f"error: cannot decode {name} ({reason}).", name=name, reason=reason) from None


class DecodedExamples:
    """A `datasets` transform yielding `pixel_values` and `labels` (what `default_data_collator` stacks): decodes
    each image itself (its column left undecoded) so that a file that fails is named, then applies `transform` to
    the batch's images and row indices.

    `policy` "stop" raises `BadImageError`; "skip" logs a warning and puts the next decodable example of the
    dataset (and its label) in place of the bad one: a deterministic choice that keeps batches full, which
    data-parallel processes need (they step together)."""

    def __init__(self, source, image_column: str, label_column: str, feature, transform, policy: str = "skip"):
        check_bad_image_policy(policy)
        self.source, self.feature, self.transform, self.policy = source, feature, transform, policy
        self.image_column, self.label_column = image_column, label_column
        self.skipped = 0  # per process: each DataLoader worker counts its own

    def __call__(self, batch):
        examples = [
            self.decode(value, label, index)
            for value, label, index in zip(batch[self.image_column], batch[self.label_column], batch[INDEX_COLUMN])
        ]
        images, labels = [image for image, _ in examples], [label for _, label in examples]
        return {"pixel_values": self.transform(images, batch[INDEX_COLUMN]), "labels": labels}

    def decode(self, value, label, index: int):
        """(image, label) of the example at row `index`, or of the example that takes its place."""
        try:
            return decode_image(value, self.feature), label
        except BadImageError as error:
            if self.policy == "stop":
                raise
            self.skipped += 1
            logger.warning(
                "Skipping %s (%s), %d skipped so far in this process (--bad_image_policy skip)",
                error.name,
                error.reason,
                self.skipped,
            )
            bad = error.name
        for offset in range(1, len(self.source)):
            row = self.source[(int(index) + offset) % len(self.source)]
            try:
                return decode_image(row[self.image_column], self.feature), row[self.label_column]
            except BadImageError:
                continue  # counted and named when its own turn comes
        raise BadImageError(f"error: no image of the dataset decodes: none can take the place of {bad}.")


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


def with_transform(dataset, image_column: str, label_column: str, transform, bad_image_policy: str = "skip"):
    """`dataset` yielding `pixel_values` and `labels`, transformed on the fly by `DecodedExamples`; `transform`
    receives the batch's images and their row indices."""
    feature = dataset.features[image_column]
    source = undecoded(dataset.add_column(INDEX_COLUMN, list(range(len(dataset)))), image_column)
    return source.with_transform(
        DecodedExamples(source, image_column, label_column, feature, transform, bad_image_policy)
    )


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
