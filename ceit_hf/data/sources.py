# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Where the images of a run come from (`train` and `validation` splits): the bundled digits, image folders (indexed
once, the index kept), a Hub dataset or local dataset folder (downloaded or streamed), each checked before training."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .decoding import IMAGE_ERRORS, BadImageError, check_bad_image_policy, decode_image, undecoded
from .loader import cpus_per_process


logger = logging.getLogger("ceit_hf.data")
DIGITS_IMAGE_SIZE = 32
INDEX_VERSION = 2
INDEX_FILE = "index.arrow"
INDEX_METADATA = b"ceit_hf_index"
CLASS_NAMES_FILE = "classes.txt"


@dataclass(frozen=True)
class DataSource:
    """What to load and how; `cache_dir`, `token` and `trust_remote_code` go to `datasets.load_dataset`."""

    dataset_name: str | None = None
    dataset_config_name: str | None = None
    train_dir: str | None = None
    validation_dir: str | None = None
    image_column_name: str = "image"
    label_column_name: str = "label"
    train_val_split: float = 0.15
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    verify_images_limit: int = 20000
    bad_image_policy: str = "skip"
    streaming: bool = False
    needs_validation: bool = True  # a stream trains without a validation split when nothing evaluates it
    class_names: str | None = None  # "a,b,c" or a file of one name per line (`class_names_of`)
    cache_dir: str | None = None
    token: str | None = None
    trust_remote_code: bool = False


def index_features(classes: list[str]):
    import datasets

    return datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})


def digits_dataset(seed: int = 0):
    """scikit-learn's bundled 8x8 handwritten digits (1,797, 10 classes), split 80/20 by class: the offline default."""
    import datasets
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [Image.fromarray((img * 255 / 16).round().astype(np.uint8), mode="L") for img in digits.images]
    features = index_features([str(i) for i in range(10)])
    full = datasets.Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features)
    split = full.train_test_split(test_size=0.2, stratify_by_column="label", seed=seed)
    return datasets.DatasetDict(train=split["train"], validation=split["test"])


def _visible(entries):
    return (entry for entry in entries if not entry.name.startswith((".", "__")))  # as datasets: .DS_Store, __MACOSX


def scan_image_folder(folder: str, flag: str) -> tuple[list[str], dict]:
    """(image paths by class, the index's description) of one `os.scandir` walk of `folder`, listed as torchvision's
    `ImageFolder` does; one line naming `folder` unless it holds a sub-folder of images per class."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    extensions = {extension.lower() for extension in ImageFolder.EXTENSIONS}
    expected = f"expected one sub-folder of images per class ({folder}/<class>/<image>)"
    root = os.path.abspath(folder)
    if not os.path.isdir(root):
        what = "is not a folder" if os.path.exists(root) else "does not exist"
        raise SystemExit(f"error: {flag} {folder!r} {what}: {expected}.")
    with os.scandir(root) as scan:
        entries = list(_visible(scan))
    if not entries:
        raise SystemExit(f"error: {flag} {folder!r} is empty: {expected}.")
    classes = sorted(entry.name for entry in entries if entry.is_dir())
    if not classes:
        raise SystemExit(
            f"error: {flag} {folder!r} has no class sub-folders ({len(entries)} files directly in it): {expected}."
        )
    paths, counts, folders = [], [], {".": os.stat(root).st_mtime_ns}
    for name in classes:
        found, pending = [], [os.path.join(root, name)]
        while pending:  # sub-folders of a class folder included
            directory = pending.pop()
            folders[os.path.relpath(directory, root)] = os.stat(directory).st_mtime_ns
            with os.scandir(directory) as scan:
                for entry in _visible(scan):
                    if entry.is_dir():
                        pending.append(entry.path)
                    elif os.path.splitext(entry.name)[1].lower() in extensions:
                        found.append(entry.path)
        if not found:
            raise SystemExit(
                f"error: {flag} {folder!r}: the class folder {name!r} holds no images (expected files such as .png "
                "or .jpg)."
            )
        paths += sorted(found)
        counts.append(len(found))
    return paths, {"version": INDEX_VERSION, "root": root, "classes": classes, "counts": counts, "folders": folders}


def save_index(paths: list[str], description: dict, store: Path):
    """The index memory-mapped from one Arrow file renamed into place in `store` (in memory if it cannot be kept)."""
    import datasets
    import pyarrow as pa

    image = pa.StructArray.from_arrays(
        [pa.nulls(len(paths), pa.binary()), pa.array(paths, pa.string())], names=["bytes", "path"]
    )
    labels = np.repeat(np.arange(len(description["counts"]), dtype=np.int64), description["counts"])
    schema = index_features(description["classes"]).arrow_schema
    schema = schema.with_metadata({**(schema.metadata or {}), INDEX_METADATA: json.dumps(description).encode()})
    table = pa.Table.from_arrays([image, pa.array(labels)], schema=schema)
    temporary = store / f"{INDEX_FILE}.{uuid.uuid4().hex}"
    try:
        store.mkdir(parents=True, exist_ok=True)
        with pa.OSFile(str(temporary), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(temporary, store / INDEX_FILE)
    except OSError as error:
        with contextlib.suppress(OSError):  # (no such file, or a file where the cache's folder should be)
            temporary.unlink()
        logger.warning(
            "Cannot keep the index of %s in %s (%s): it stays in memory.", description["root"], store, error
        )
        return datasets.Dataset(table)
    return datasets.Dataset.from_file(str(store / INDEX_FILE))


def load_index(root: str, store: Path):
    """(the dataset, images per class) of the index in `store`, or None if none or a folder's time changed since."""
    import datasets
    import pyarrow as pa

    path = store / INDEX_FILE
    try:
        with pa.memory_map(str(path)) as source:
            description = json.loads(pa.ipc.open_stream(source).schema.metadata[INDEX_METADATA])
        if description.get("version") != INDEX_VERSION or description["root"] != root:
            return None
        if any(os.stat(os.path.join(root, f)).st_mtime_ns != t for f, t in description["folders"].items()):
            return None
        dataset = datasets.Dataset.from_file(str(path))
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowInvalid):
        return None
    return (dataset, description["counts"]) if len(dataset) == sum(description["counts"]) else None


def image_folder_dataset(folder: str, flag: str, decode_limit: int = 0, cache_dir: str | None = None):
    """(`folder`'s images as a `datasets.Dataset` of paths and labels, images per class), its index reused while no
    folder changes; up to `decode_limit` images are decoded in full, failing in one line that names the bad ones."""
    import datasets

    def decodes(file: str) -> bool:
        with contextlib.suppress(*IMAGE_ERRORS), Image.open(file) as image:
            image.load()
            return True
        return False

    root = os.path.abspath(folder)
    base = Path(cache_dir or datasets.config.HF_DATASETS_CACHE)
    store = base / "ceit_hf_image_folders" / hashlib.sha256(root.encode()).hexdigest()[:16]
    start = time.perf_counter()
    found, how = load_index(root, store), "index reused"
    if found is None:
        paths, description = scan_image_folder(folder, flag)
        found, how = (save_index(paths, description, store), description["counts"]), "indexed"
    dataset, counts = found
    elapsed = time.perf_counter() - start
    logger.info("%s: %d images in %d classes (%s in %.2f s)", folder, len(dataset), len(counts), how, elapsed)
    if len(dataset) <= decode_limit:
        logger.info("Decoding the %d images of %s (--verify_images_limit %d)", len(dataset), folder, decode_limit)
        files = dataset.data.column("image").combine_chunks().field("path").to_pylist()
        with ThreadPoolExecutor(max(1, cpus_per_process())) as pool:  # Pillow decodes without holding the GIL
            good = list(pool.map(decodes, files))
        unreadable = [os.path.relpath(file, root) for file, decoded in zip(files, good) if not decoded]
        if unreadable:
            names = ", ".join(unreadable[:5]) + (f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else "")
            raise SystemExit(f"error: {flag} {folder!r}: {len(unreadable)} file(s) are not readable images: {names}.")
    return dataset, counts


def stratified_split(counts: list[int], test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows) of rows grouped by class: `ceil(test_size x count)` of each class held out."""
    counts = np.asarray(counts, dtype=np.int64)
    labels = np.repeat(np.arange(len(counts)), counts)
    keys = np.random.default_rng(seed).random(len(labels))
    order = np.lexsort((keys, labels))  # within each class, in random order
    held = np.minimum(np.ceil(counts * test_size).astype(np.int64), np.maximum(counts - 1, 0))
    rank = np.arange(len(labels)) - np.repeat(np.cumsum(counts) - counts, counts)
    test = rank < np.repeat(held, counts)
    return np.sort(order[~test]), np.sort(order[test])


@contextlib.contextmanager
def main_process_first():
    """Runs the first process of each machine before the others (which reuse its index), yielding whether it is."""
    import torch.distributed
    from accelerate import PartialState

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        with PartialState().local_main_process_first():
            yield PartialState().is_local_main_process
    else:
        yield True


def load_image_datasets(source: DataSource, seed: int):  # noqa: C901 (a branch per data source)
    """The train and validation splits, from `--dataset_name` (downloaded or streamed), image folders or the bundled
    digits; a missing validation split is held out of the training one (not a stream's)."""
    import datasets

    check_bad_image_policy(source.bad_image_policy)
    if source.dataset_name is not None:
        raw = load_hub_dataset(source)
    elif source.train_dir is not None:
        with main_process_first() as first:
            raw = image_folders(source, source.verify_images_limit if first else 0, seed)
    else:
        raw = digits_dataset(seed=0)
    if "train" not in raw:
        raise SystemExit(f"error: the dataset has no 'train' split (splits: {list(raw)}).")
    columns = raw["train"].column_names  # None for a stream whose columns are known only once it is read
    for column in (source.image_column_name, source.label_column_name):
        if columns is not None and column not in columns:
            raise SystemExit(
                f"error: column {column!r} is not in the dataset (columns: {columns}); pass "
                "--image_column_name / --label_column_name."
            )
    if "validation" not in raw and (named := next((s for s in ("val", "valid", "test") if s in raw), None)):
        raw["validation"] = raw.pop(named)
    if source.streaming:
        if "validation" not in raw and source.needs_validation:
            raise SystemExit(
                f"error: --streaming needs a validation split to evaluate (splits: {list(raw)}); expected a split "
                "named 'validation', 'val', 'valid' or 'test' (for local shards: files named validation-*.parquet, "
                "...), or --eval_strategy no to train without one."
            )
        if "validation" in raw and source.max_eval_samples is not None:
            raw["validation"] = raw["validation"].take(source.max_eval_samples)
        return raw
    if "validation" not in raw:
        label = source.label_column_name
        stratify = label if isinstance(raw["train"].features[label], datasets.ClassLabel) else None
        try:
            split = raw["train"].train_test_split(
                test_size=source.train_val_split, seed=seed, stratify_by_column=stratify
            )
        except ValueError as error:  # (a class of one example cannot be split; datasets says so with a traceback)
            raise SystemExit(
                f"error: the dataset has no validation split, and --train_val_split {source.train_val_split} of its "
                f"training split cannot be held out for one ({error}): expected classes of at least 2 examples, or a "
                "split named 'validation'."
            ) from None
        raw["train"], raw["validation"] = split["train"], split["test"]
    if source.max_train_samples is not None:
        kept = range(min(source.max_train_samples, len(raw["train"])))
        raw["train"] = raw["train"].shuffle(seed=seed, keep_in_memory=True).select(kept, keep_in_memory=True)
    if source.max_eval_samples is not None:
        kept = range(min(source.max_eval_samples, len(raw["validation"])))
        raw["validation"] = raw["validation"].select(kept, keep_in_memory=True)
    return raw


def image_folders(source: DataSource, decode_limit: int, seed: int):
    """--train_dir and --validation_dir (else a stratified part of the training images held out)."""
    import datasets
    import pyarrow as pa

    train, counts = image_folder_dataset(source.train_dir, "--train_dir", decode_limit, source.cache_dir)
    if source.validation_dir is None:
        kept, held = stratified_split(counts, source.train_val_split, seed)
        if not len(held):
            raise SystemExit(
                f"error: --train_dir {source.train_dir!r}: too few images to hold out --train_val_split "
                f"{source.train_val_split} of them for validation (expected classes of at least 2 images, or "
                "give --validation_dir)."
            )
        return datasets.DatasetDict(
            train=train.select(kept, keep_in_memory=True), validation=train.select(held, keep_in_memory=True)
        )
    folder = source.validation_dir
    validation, validation_counts = image_folder_dataset(folder, "--validation_dir", decode_limit, source.cache_dir)
    classes, own = train.features["label"].names, validation.features["label"].names
    if own != classes:  # labelled by the training folder's class numbers
        if unknown := [name for name in own if name not in classes]:
            raise SystemExit(
                f"error: --validation_dir {folder!r}: the class folder(s) {unknown[:5]} are not classes of "
                "--train_dir (expected the same class sub-folders as the training images: "
                f"{classes[:5]}{'...' if len(classes) > 5 else ''})."
            )
        labels = np.repeat(np.array([classes.index(name) for name in own], dtype=np.int64), validation_counts)
        table = pa.Table.from_arrays(
            [validation.data.column("image"), pa.array(labels)], schema=index_features(classes).arrow_schema
        )
        validation = datasets.Dataset(table)
    return datasets.DatasetDict(train=train, validation=validation)


def load_hub_dataset(source: DataSource):
    """`--dataset_name` (a Hub id or a local folder) by `datasets.load_dataset`, or one line naming it."""
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    name = source.dataset_name
    options = {"cache_dir": source.cache_dir, "token": source.token, "trust_remote_code": source.trust_remote_code}
    try:
        return datasets.load_dataset(name, source.dataset_config_name, streaming=source.streaming, **options)
    except ConnectionError as error:
        if datasets.config.HF_HUB_OFFLINE:
            raise SystemExit(
                f"error: --dataset_name {name!r} is not found locally (no such folder, nor in the datasets cache) "
                "and the Hub is offline (HF_HUB_OFFLINE=1): expected a local dataset folder, a dataset loaded "
                "once online, or a run with HF_HUB_OFFLINE unset."
            ) from None
        raise SystemExit(f"error: --dataset_name {name!r}: cannot reach the Hub ({error}).") from None
    except DatasetNotFoundError as error:
        raise SystemExit(
            f"error: --dataset_name {name!r} is neither a local folder nor a dataset on the Hub ({error})."
        ) from None


def class_names_of(source: DataSource) -> list[str] | None:
    """The names of integer labels (label i is the i-th): `--class_names` (separated by commas, or a file of one name
    per line), else `classes.txt` beside the shards of a local --dataset_name folder, else None."""
    given, where = source.class_names, "--class_names"
    beside = os.path.join(source.dataset_name or "", CLASS_NAMES_FILE)
    if given is None and source.dataset_name is not None and os.path.isfile(beside):
        given, where = beside, "the class names file"
    if given is None:
        return None
    if os.path.isfile(given):
        try:
            with open(given, encoding="utf-8") as file:
                names = [line.strip() for line in file if line.strip()]
        except (OSError, UnicodeDecodeError) as error:
            raise SystemExit(f"error: {where} {given!r} cannot be read ({error}).") from None
    else:
        names = [name.strip() for name in given.split(",") if name.strip()]
    if not names or len(set(names)) != len(names):
        raise SystemExit(
            f"error: {where} {given!r}: expected distinct class names, label 0's first (separated by commas, or a "
            f"file of one name per line); got {names[:10]}."
        )
    return names


def label_names(dataset, label_column: str, class_names: list[str] | None = None) -> list[str]:
    """Class names: of a `ClassLabel` column (as `class_names` if given), `class_names`, else the sorted labels."""
    import datasets
    import pyarrow.compute as pc

    feature = dataset.features[label_column] if dataset.features else None
    if isinstance(feature, datasets.ClassLabel):
        if class_names is not None and list(class_names) != list(feature.names):
            raise SystemExit(
                f"error: the class names given ({class_names[:10]}) differ from those of the dataset's label column "
                f"{label_column!r} ({feature.names[:10]}): expected the same, or none given."
            )
        return list(feature.names)
    if class_names is not None:
        return list(class_names)
    if isinstance(dataset, datasets.IterableDataset):
        raise SystemExit(
            f"error: --streaming needs the class names: the label column {label_column!r} is {feature}, expected a "
            "ClassLabel (datasets keeps its names in the dataset card's dataset_info or in parquet files it wrote), "
            f"--class_names a,b,c (or a file of one name per line), or a file {CLASS_NAMES_FILE} beside the shards."
        )
    values = sorted(pc.unique(dataset.data.column(label_column)).to_pylist())  # in Arrow: no per-row Python
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values) or values != list(range(len(values))):
        raise ValueError(
            f"Labels of column {label_column!r} must be a ClassLabel or the integers 0..K-1; got {values[:10]}."
        )
    return [str(v) for v in values]


def check_labels(dataset, label_column: str, num_labels: int, split: str):
    """Refuses labels outside `[0, num_labels)` (which would crash mid-run or train wrong); a stream checks its own."""
    import datasets
    import pyarrow.compute as pc

    if isinstance(dataset, datasets.IterableDataset):
        return
    column = dataset.data.column(label_column)
    outside = pc.or_(pc.less(column, 0), pc.greater_equal(column, num_labels))
    if bad := sorted(pc.unique(pc.filter(column, outside)).to_pylist())[:10]:
        raise ValueError(
            f"The {split} split has labels {bad} outside the model's {num_labels} classes "
            f"(id2label 0..{num_labels - 1})."
        )


def image_size_from_data(train, column: str, samples: int = 64) -> int:
    """The crop size from scratch: the median shorter side of the first images, a multiple of 16, 32 to 224."""
    feature = train.features[column] if train.features else None
    sides = []
    for row in itertools.islice(undecoded(train, column), samples):
        try:
            sides.append(min(decode_image(row[column], feature).size))
        except BadImageError as error:
            logger.warning("Leaving %s out of the image size choice: %s", error.name, error.reason)
    side = int(np.median(sides)) if sides else 224
    return int(min(224, max(32, round(side / 16) * 16)))
