# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""The data of a training run: the bundled digits, image folders (indexed in one directory walk, the index kept and
reused) or a Hub dataset as a `DatasetDict` with `train` and `validation` splits, checked before any training (bad
folders fail with one line saying what was expected, small ones are decoded in full), or a Hub dataset or local
shards read as streams split between the processes (`--streaming`, resumable); images decoded by the dataset
itself (a file that fails is named, then skipped or stopped on, and never stands for another in an evaluation), the
torchvision transforms v2 recipe applied on the fly with per-example seeds, and the default number of DataLoader
workers."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.utils.data
from PIL import Image
from torch.utils.data import IterableDataset as TorchIterableDataset
from transformers import TrainerCallback

from .arguments import DataArguments, ModelArguments, RecipeArguments


logger = logging.getLogger("ceit_hf.training")
DIGITS_IMAGE_SIZE = 32
# The label that cross-entropy (its ignore_index) and the metrics leave out: a bad image in evaluation.
IGNORE_INDEX = -100
PLACEHOLDER_SIZE = (224, 224)  # the blank image in its place
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


# ------------------------------------------------------------------------------------------------ image folders
#
# A folder is indexed the way torchvision's `ImageFolder` does it: one `os.scandir` walk that lists every class
# folder's images (class = first-level folder, in sorted order), with no per-file work beyond that walk. The paths
# and labels go into an Arrow file in one go, saved under the datasets cache and memory-mapped from there, with the
# modification time of every folder walked: a later run (and the other processes of this one) whose folders all
# have the same times reuses it without a walk. (Adding, removing or renaming a file changes its folder's time.)

INDEX_VERSION = 1


def _hidden(name: str) -> bool:
    return name.startswith((".", "__"))  # as datasets' imagefolder: .DS_Store, __MACOSX


@dataclass
class FolderIndex:
    """The images of an image folder: `paths` grouped by class in `classes` order (`counts` per class), and the
    modification time of every folder walked (relative to `root`)."""

    root: str
    classes: list[str]
    paths: list[str]
    counts: list[int]
    folders: dict[str, int]

    @property
    def labels(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.classes), dtype=np.int64), self.counts)


def scan_image_folder(folder: str, flag: str) -> FolderIndex:
    """One `os.scandir` walk of `folder`, or one line naming it unless it is an `imagefolder` layout (a sub-folder
    of images per class; hidden files and folders left out, sub-folders of a class folder included)."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    extensions = {extension.lower() for extension in ImageFolder.EXTENSIONS}
    expected = f"expected one sub-folder of images per class ({folder}/<class>/<image>)"
    root = os.path.abspath(folder)
    try:
        top = os.stat(root)
    except FileNotFoundError:
        raise SystemExit(f"error: {flag} {folder!r} does not exist: {expected}.") from None
    if not stat.S_ISDIR(top.st_mode):
        raise SystemExit(f"error: {flag} {folder!r} is not a folder: {expected}.")
    with os.scandir(root) as scan:
        entries = [entry for entry in scan if not _hidden(entry.name)]
    if not entries:
        raise SystemExit(f"error: {flag} {folder!r} is empty: {expected}.")
    classes = sorted(entry.name for entry in entries if entry.is_dir())
    if not classes:
        raise SystemExit(
            f"error: {flag} {folder!r} has no class sub-folders ({len(entries)} files directly in it): {expected}."
        )
    paths, counts, folders = [], [], {".": top.st_mtime_ns}
    for name in classes:
        start = len(paths)
        _scan_class(os.path.join(root, name), root, extensions, paths, folders)
        if len(paths) == start:
            raise SystemExit(
                f"error: {flag} {folder!r}: the class folder {name!r} holds no images (expected files such as .png "
                "or .jpg)."
            )
        paths[start:] = sorted(paths[start:])
        counts.append(len(paths) - start)
    return FolderIndex(root, classes, paths, counts, folders)


def _scan_class(folder: str, root: str, extensions: set[str], paths: list[str], folders: dict[str, int]) -> None:
    """Appends the images under the class folder `folder` to `paths`, and each folder's modification time to
    `folders`."""
    pending = [folder]
    while pending:
        directory = pending.pop()
        folders[os.path.relpath(directory, root)] = os.stat(directory).st_mtime_ns
        with os.scandir(directory) as scan:
            for entry in scan:
                if _hidden(entry.name):
                    continue
                if entry.is_dir():
                    pending.append(entry.path)
                elif os.path.splitext(entry.name)[1].lower() in extensions:
                    paths.append(entry.path)


def index_store(root: str, cache_dir: str | None = None) -> Path:
    """Where the index of the folder `root` (an absolute path) is kept: under `cache_dir` (--cache_dir), else the
    datasets cache."""
    import datasets

    base = Path(cache_dir) if cache_dir else Path(datasets.config.HF_DATASETS_CACHE)
    return base / "ceit_hf_image_folders" / hashlib.sha256(root.encode()).hexdigest()[:16]


def index_features(classes: list[str]):
    import datasets

    return datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})


def save_index(index: FolderIndex, store: Path):
    """`index` as a `datasets.Dataset` (an image column of paths, a ClassLabel column), written to `store` and
    memory-mapped from there; kept in memory when `store` cannot be written. The description (index.json) is
    written last, each file to a temporary name first: a reader sees a complete index or none."""
    import datasets
    import pyarrow as pa

    features = index_features(index.classes)
    count = len(index.paths)
    image = pa.StructArray.from_arrays(
        [pa.nulls(count, pa.binary()), pa.array(index.paths, pa.string())], names=["bytes", "path"]
    )
    table = pa.Table.from_arrays([image, pa.array(index.labels)], schema=features.arrow_schema)
    description = {
        "version": INDEX_VERSION,
        "root": index.root,
        "classes": index.classes,
        "counts": index.counts,
        "folders": index.folders,
    }
    try:
        store.mkdir(parents=True, exist_ok=True)
        temporary = store / f"index.arrow.{os.getpid()}"
        with pa.OSFile(str(temporary), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(temporary, store / "index.arrow")
        temporary = store / f"index.json.{os.getpid()}"
        temporary.write_text(json.dumps(description), encoding="utf-8")
        os.replace(temporary, store / "index.json")
    except OSError as error:
        logger.warning("Cannot keep the index of %s in %s (%s): it stays in memory.", index.root, store, error)
        return datasets.Dataset(table)
    return datasets.Dataset.from_file(str(store / "index.arrow"))


def load_index(root: str, store: Path):
    """(the dataset, images per class) of the index kept in `store` for the folder `root`, or None when there is
    none or a folder walked for it has changed since (a `stat` per folder, none per file)."""
    import datasets

    try:
        description = json.loads((store / "index.json").read_text(encoding="utf-8"))
        if description.get("version") != INDEX_VERSION or description["root"] != root:
            return None
        for relative, mtime in description["folders"].items():
            if os.stat(os.path.join(root, relative)).st_mtime_ns != mtime:
                return None
        dataset = datasets.Dataset.from_file(str(store / "index.arrow"))
    except (OSError, ValueError, KeyError):
        return None
    if len(dataset) != sum(description["counts"]):
        return None
    return dataset, description["counts"]


def image_folder_dataset(folder: str, flag: str, decode_limit: int = 0, cache_dir: str | None = None):
    """(the images of `folder` as a `datasets.Dataset` of paths and ClassLabel labels, images per class). The index
    of an earlier run is reused when the folder is unchanged, else the folder is walked once (`scan_image_folder`)
    and the index kept (`save_index`). A folder of at most `decode_limit` images has every image decoded, and
    fails naming the files that do not decode (a truncated file has a valid header); in a larger one a file that
    fails is found when it is read in training (`--bad_image_policy`)."""
    root = os.path.abspath(folder)
    store = index_store(root, cache_dir)
    start = time.perf_counter()
    found = load_index(root, store)
    if found is None:
        index = scan_image_folder(folder, flag)
        dataset, counts = save_index(index, store), index.counts
        how = "indexed"
    else:
        (dataset, counts), how = found, "index reused"
    logger.info(
        "%s: %d images in %d classes (%s in %.2f s)",
        folder,
        len(dataset),
        len(counts),
        how,
        time.perf_counter() - start,
    )
    if len(dataset) <= decode_limit:
        logger.info(
            "Decoding the %d images of %s to check them (--verify_images_limit %d)", len(dataset), folder, decode_limit
        )
        files = dataset.data.column("image").combine_chunks().field("path").to_pylist()
        unreadable = [os.path.relpath(file, root) for file in unreadable_images(files)]
        if unreadable:
            names = ", ".join(unreadable[:5]) + (f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else "")
            raise SystemExit(f"error: {flag} {folder!r}: {len(unreadable)} file(s) are not readable images: {names}.")
    return dataset, counts


def unreadable_images(files: list[str]) -> list[str]:
    """The `files` Pillow cannot decode. In threads: Pillow reads and decodes without holding the GIL."""
    from concurrent.futures import ThreadPoolExecutor

    def fails(file: str) -> bool:
        try:
            with Image.open(file) as image:
                image.load()
        except IMAGE_ERRORS:
            return True
        return False

    with ThreadPoolExecutor(max(1, cpus_per_process())) as pool:
        return [file for file, failed in zip(files, pool.map(fails, files)) if failed]


def with_classes(dataset, counts: list[int], classes: list[str], flag: str, folder: str):
    """The folder dataset `dataset` labelled with the class list `classes` (the training folder's) instead of its
    own: its class folders must be among them."""
    import datasets
    import pyarrow as pa

    own = dataset.features["label"].names
    if own == classes:
        return dataset
    unknown = [name for name in own if name not in classes]
    if unknown:
        raise SystemExit(
            f"error: {flag} {folder!r}: the class folder(s) {unknown[:5]} are not classes of --train_dir (expected "
            f"the same class sub-folders as the training images: {classes[:5]}{'...' if len(classes) > 5 else ''})."
        )
    mapping = np.array([classes.index(name) for name in own], dtype=np.int64)
    labels = np.repeat(mapping, counts)
    table = pa.Table.from_arrays(
        [dataset.data.column("image"), pa.array(labels)], schema=index_features(classes).arrow_schema
    )
    return datasets.Dataset(table)


def stratified_split(counts: list[int], test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows) of a dataset whose rows are grouped by class (`counts` rows per class): in
    each class `ceil(test_size x count)` rows drawn at random are held out (one is left for training). Sorted."""
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
    """A context in which the first process of each machine runs before the others (accelerate's
    `local_main_process_first`), given whether this process is that first one: it indexes an image folder and
    checks its images, the others then reuse its index. Alone in a single process."""
    import torch.distributed

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        yield True
        return
    from accelerate import PartialState

    state = PartialState()
    with state.local_main_process_first():
        yield state.is_local_main_process


def load_image_datasets(data_args: DataArguments, model_args: ModelArguments, seed: int):  # noqa: C901 (a branch per data source)
    """The train and validation splits, from the Hub (downloaded, or streamed with --streaming), image folders (the
    first process of each machine indexes them, the others reuse its index), or the bundled digits."""
    import datasets

    check_bad_image_policy(data_args.bad_image_policy)
    if data_args.streaming:
        return load_streams(data_args, model_args)
    if data_args.dataset_name is not None:
        raw = load_hub_dataset(data_args, model_args)
    elif data_args.train_dir is not None:
        with main_process_first() as first:
            raw = image_folders(data_args, model_args, data_args.verify_images_limit if first else 0, seed)
    else:
        raw = digits_dataset(seed=0)

    if "train" not in raw:
        raise SystemExit(f"error: the dataset has no 'train' split (splits: {list(raw)}).")
    check_columns(raw["train"], data_args)
    if not name_validation_split(raw):
        stratify = isinstance(raw["train"].features[data_args.label_column_name], datasets.ClassLabel)
        split = raw["train"].train_test_split(
            test_size=data_args.train_val_split,
            seed=seed,
            stratify_by_column=data_args.label_column_name if stratify else None,
        )
        raw["train"], raw["validation"] = split["train"], split["test"]
    if data_args.max_train_samples is not None:
        kept = min(data_args.max_train_samples, len(raw["train"]))
        raw["train"] = raw["train"].shuffle(seed=seed, keep_in_memory=True).select(range(kept), keep_in_memory=True)
    if data_args.max_eval_samples is not None:
        raw["validation"] = raw["validation"].select(
            range(min(data_args.max_eval_samples, len(raw["validation"]))), keep_in_memory=True
        )
    return raw


def image_folders(data_args: DataArguments, model_args: ModelArguments, decode_limit: int, seed: int):
    """--train_dir and --validation_dir (else a stratified part of the training images held out) as a
    `DatasetDict`, from their indexes (`image_folder_dataset`)."""
    import datasets

    train, counts = image_folder_dataset(data_args.train_dir, "--train_dir", decode_limit, model_args.cache_dir)
    if data_args.validation_dir is None:  # held out from the index's rows, which are grouped by class
        kept, held = stratified_split(counts, data_args.train_val_split, seed)
        if not len(held):
            raise SystemExit(
                f"error: --train_dir {data_args.train_dir!r}: too few images to hold out --train_val_split "
                f"{data_args.train_val_split} of them for validation (expected classes of at least 2 images, or "
                "give --validation_dir)."
            )
        return datasets.DatasetDict(
            train=train.select(kept, keep_in_memory=True), validation=train.select(held, keep_in_memory=True)
        )
    folder = data_args.validation_dir
    validation, validation_counts = image_folder_dataset(
        folder, "--validation_dir", decode_limit, model_args.cache_dir
    )
    classes = train.features["label"].names
    return datasets.DatasetDict(
        train=train, validation=with_classes(validation, validation_counts, classes, "--validation_dir", folder)
    )


def load_hub_dataset(data_args: DataArguments, model_args: ModelArguments, streaming: bool = False):
    """`--dataset_name` (a Hub id or a local folder) with `datasets.load_dataset`, downloaded or as streams."""
    import datasets

    return datasets.load_dataset(
        data_args.dataset_name,
        data_args.dataset_config_name,
        cache_dir=model_args.cache_dir,
        token=model_args.token,
        trust_remote_code=model_args.trust_remote_code,
        streaming=streaming,
    )


def name_validation_split(raw) -> bool:
    """Whether `raw` has a validation split: `validation`, else its `val`, `valid` or `test` split renamed so."""
    if "validation" not in raw:
        validation = next((s for s in ("val", "valid", "test") if s in raw), None)
        if validation is None:
            return False
        raw["validation"] = raw.pop(validation)
    return True


def check_columns(dataset, data_args: DataArguments) -> None:
    columns = dataset.column_names
    if columns is None:  # a stream whose columns are known only once it is read
        return
    for column in (data_args.image_column_name, data_args.label_column_name):
        if column not in columns:
            raise SystemExit(
                f"error: column {column!r} is not in the dataset (columns: {columns}); pass "
                "--image_column_name / --label_column_name."
            )


def load_streams(data_args: DataArguments, model_args: ModelArguments):
    """The train and validation splits of `--dataset_name` as `datasets` streams (`IterableDataset`): a Hub id or a
    local folder of shards (parquet files, webdataset tars), read as they are consumed."""
    raw = load_hub_dataset(data_args, model_args, streaming=True)
    if "train" not in raw:
        raise SystemExit(f"error: the dataset has no 'train' split (splits: {list(raw)}).")
    check_columns(raw["train"], data_args)
    if not name_validation_split(raw):
        raise SystemExit(
            f"error: --streaming needs a validation split (splits: {list(raw)}); expected a split named "
            "'validation', 'val', 'valid' or 'test' (for local shards: files named validation-*.parquet, ...)."
        )
    if data_args.max_eval_samples is not None:
        raw["validation"] = raw["validation"].take(data_args.max_eval_samples)
    return raw


def label_names(dataset, label_column: str) -> list[str]:
    """Class names from a `ClassLabel` column, else the sorted distinct label values (a stream needs a ClassLabel:
    it is not read in full before training)."""
    import datasets
    import pyarrow.compute as pc

    feature = dataset.features[label_column] if dataset.features else None
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    if isinstance(dataset, datasets.IterableDataset):
        raise SystemExit(
            f"error: --streaming needs the class names: the label column {label_column!r} is {feature}, expected a "
            "ClassLabel (datasets keeps its names in the dataset card's dataset_info or in parquet files it wrote)."
        )
    values = pc.unique(dataset.data.column(label_column)).to_pylist()  # the whole table: no per-row Python
    values = sorted(values)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values) or values != list(range(len(values))):
        raise ValueError(
            f"Labels of column {label_column!r} must be a ClassLabel or the integers 0..K-1; got {values[:10]}."
        )
    return [str(v) for v in values]


def check_labels(dataset, label_column: str, num_labels: int, split: str):
    """Refuses labels outside `[0, num_labels)`, which would otherwise crash mid-run or train silently wrong. Reads
    the column of the dataset's whole table in Arrow (a selection of it is checked with the rest); a stream is
    checked example by example as it is read (`StreamedExamples`)."""
    import datasets
    import pyarrow.compute as pc

    if isinstance(dataset, datasets.IterableDataset):
        return
    column = dataset.data.column(label_column)
    bounds = pc.min_max(column).as_py()
    if bounds["min"] is not None and (bounds["min"] < 0 or bounds["max"] >= num_labels):
        outside = pc.or_(pc.less(column, 0), pc.greater_equal(column, num_labels))
        bad = sorted(pc.unique(pc.filter(column, outside)).to_pylist())[:10]
        raise ValueError(
            f"The {split} split has labels {bad} outside the model's {num_labels} classes "
            f"(id2label 0..{num_labels - 1})."
        )


def example_count(dataset) -> str:
    """The number of examples of `dataset`, or "streamed" for a stream."""
    try:
        return str(len(dataset))
    except TypeError:
        return "streamed"


def choose_image_size(model_args: ModelArguments, data_args: DataArguments, train, samples: int = 64) -> int | None:
    """The crop size of a model trained from scratch: `--image_size`, 32 for the digits, else the median shorter
    side of some training images rounded to a multiple of 16 (what the default stem and patch need), 32 to 224.
    None for pretrained models and presets (their own size). Images that fail to decode are left out."""
    if model_args.image_size is not None or model_args.model_name_or_path or model_args.preset:
        return model_args.image_size
    if data_args.bundled:
        return DIGITS_IMAGE_SIZE
    column = data_args.image_column_name
    feature = train.features[column] if train.features else None
    source = undecoded(train, column)
    if isinstance(source, TorchIterableDataset):  # a stream: its first examples
        values = [row[column] for row in itertools.islice(source, samples)]
    else:
        values = source.select(range(min(samples, len(source))))[column]
    sides = []
    for value in values:
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

    feature = dataset.features[column] if dataset.features else None
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


class ExampleDecoder:
    """Decodes the image of an example itself (its column left undecoded), so that a file that fails is named, and
    applies `--bad_image_policy` to it: "stop" raises `BadImageError`; "skip" logs a warning naming it and counts
    it. What takes the place of a bad image depends on where it is read (`DecodedExamples`, `StreamedExamples`): in
    evaluation it is left out of the loss and the metrics (its label becomes `IGNORE_INDEX`), so a score is never
    that of another image."""

    def __init__(self, image_column: str, label_column: str, feature, policy: str, evaluation: bool):
        check_bad_image_policy(policy)
        self.image_column, self.label_column, self.feature = image_column, label_column, feature
        self.policy, self.evaluation = policy, evaluation
        self.skipped, self.last_skipped = 0, None  # per process: each DataLoader worker counts its own

    def decode(self, value):
        """The decoded image, or None for a bad one under "skip" (named in a warning and counted)."""
        try:
            return decode_image(value, self.feature)
        except BadImageError as error:
            if self.policy == "stop":
                raise
            self.skipped, self.last_skipped = self.skipped + 1, error.name
            logger.warning(
                "%s %s (%s), %d so far in this process (--bad_image_policy skip)",
                "Leaving out of the evaluation" if self.evaluation else "Skipping",
                error.name,
                error.reason,
                self.skipped,
            )
            return None


class DecodedExamples(ExampleDecoder):
    """A map-style dataset over the rows of a `datasets.Dataset` yielding `pixel_values` and `labels` (what
    `default_data_collator` stacks): a batch of rows is read in one go (`__getitems__`, as `datasets` itself), its
    images decoded (`ExampleDecoder`), then `transform` is applied to the images and their row indices.

    A bad image under "skip": in training the next decodable example of the dataset (and its label) takes its place,
    a deterministic choice that keeps batches full, which data-parallel processes need (they step together); in
    evaluation a blank image with the label `IGNORE_INDEX` takes it, left out of the loss and the metrics."""

    def __init__(self, dataset, image_column: str, label_column: str, transform, policy="skip", evaluation=False):
        feature = dataset.features[image_column]
        super().__init__(image_column, label_column, feature, policy, evaluation)
        self.source, self.transform = undecoded(dataset, image_column), transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict]:
        rows = self.source[[int(index) for index in indices]]
        examples = [
            self.example(value, label, index)
            for value, label, index in zip(rows[self.image_column], rows[self.label_column], indices)
        ]
        pixel_values = self.transform([image for image, _ in examples], indices)
        return [{"pixel_values": pixels, "labels": label} for pixels, (_, label) in zip(pixel_values, examples)]

    def example(self, value, label, index: int):
        """(image, label) of the row `index`, or what takes its place."""
        image = self.decode(value)
        if image is not None:
            return image, label
        if self.evaluation:
            return Image.new("RGB", PLACEHOLDER_SIZE), IGNORE_INDEX
        for offset in range(1, len(self.source)):
            row = self.source[(int(index) + offset) % len(self.source)]
            try:
                return decode_image(row[self.image_column], self.feature), row[self.label_column]
            except BadImageError:
                continue  # counted and named when its own turn comes
        raise BadImageError(f"error: no image of the dataset decodes: none can take the place of {self.last_skipped}.")


# ---------------------------------------------------------------------------------------------------- streams
#
# A stream (`--streaming`) is read by every process for itself: `datasets.distributed.split_dataset_by_node` gives
# each process whole shards when their count is a multiple of the processes (else every process reads all and
# keeps one example in world size), and `datasets` gives each DataLoader worker of a process whole shards of those.
# Each worker reads its part pass after pass, with no end: the shards' order (and so which process reads which) is
# drawn from (seed, pass), the same on every process, so that a pass never gives an example twice across
# processes, and a process never runs out of data before the others (the run is sized by --max_steps). A worker
# reads its shards one after the other, through a shuffle buffer of --shuffle_buffer_size examples seeded from
# (seed, pass, process, worker): shards written in random order (as webdataset and timm advise) shuffle best.
#
# The position: each example carries its worker's position in the source (`IterableDataset.state_dict`: the shard
# and the example in it that the worker has read up to), the training process keeps the one of the last batch it
# consumed from each worker, and a checkpoint saves them (`StreamPositionCallback`). A resumed run starts each
# worker there. Exact: the shards and examples read from the source (none consumed before the checkpoint comes
# again in that pass). Not kept: the shuffle buffers' contents (at most --shuffle_buffer_size examples per worker,
# which the resumed pass leaves out) and the order drawn from them; batches prefetched but not consumed are read
# again.

STREAM_POSITION = "__stream_position__"
STREAM_STATE_FILE = "stream_state_rank{rank}.json"


class StreamedExamples(TorchIterableDataset):
    """A `datasets` stream as `pixel_values` and `labels`, decoded (`ExampleDecoder`) and transformed example by
    example. `split` = (seed, shuffle buffer size, process rank, world size) for training: the stream is split
    between the processes and read pass after pass without end (see above), a bad image under "skip" is left out
    (the next example of the stream follows). Without `split` (evaluation) it is read once, in order, by the process
    that reads (accelerate sends the batches to the others), and a bad image counts as `IGNORE_INDEX`."""

    def __init__(self, source, image_column, label_column, transform, num_labels, policy="skip", split=None):
        super().__init__()
        feature = source.features[image_column] if source.features else None
        self.decoder = ExampleDecoder(image_column, label_column, feature, policy, evaluation=split is None)
        self.source, self.transform = undecoded(source, image_column), transform
        self.num_labels, self.split = num_labels, split
        self.start = {}  # worker -> the position to resume it from (training)
        self.consumed = {}  # worker -> the position of the last batch the training process consumed from it

    def pass_stream(self, number: int):
        """The part of the source that this process reads in pass `number`: the shards in an order drawn from
        (seed, pass) (`set_epoch` of a `datasets` stream), split between the processes."""
        from datasets.distributed import split_dataset_by_node

        seed, _, rank, world_size = self.split
        stream = split_dataset_by_node(self.source, rank=rank, world_size=world_size)  # a new stream object
        stream.set_epoch(1 + hash((seed, number)) % 0x7FFF_FFFF)  # (epoch 0 keeps the order as it is)
        return stream

    def __iter__(self):
        if self.split is None:
            return (self.example(row, key=None) for row in self.source)
        return self.training_examples()

    def training_examples(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        seed, buffer_size, rank, _ = self.split
        position = self.start.get(worker) or {"pass": 0, "given": 0, "state": None}
        number, given, state = position["pass"], position["given"], position["state"]
        while True:
            stream = self.pass_stream(number)
            if state is not None:
                stream.load_state_dict(state)
            start = given
            for row in shuffle_buffer(stream, buffer_size, np.random.default_rng([seed, number, rank, worker])):
                given += 1
                if (example := self.training_example(row, number, worker, given, stream)) is not None:
                    yield example
            if given == start:  # nothing in a whole pass: no shard for this worker
                return
            number, given, state = number + 1, 0, None

    def training_example(self, row, number: int, worker: int, given: int, stream):
        """The example of `row`, the `given`-th of pass `number` of `worker` (None for a bad image under "skip"),
        with the position of `stream`. Its augmentation is seeded from (pass, process, worker, given)."""
        example = self.example(row, key=hash((number, self.split[2], worker, given)) & 0x7FFF_FFFF_FFFF)
        if example is not None:
            example[STREAM_POSITION] = (worker, {"pass": number, "given": given, "state": stream.state_dict()})
        return example

    def example(self, row, key):
        label = row[self.decoder.label_column]
        if not 0 <= label < self.num_labels:
            raise ValueError(
                f"The stream has the label {label} outside the model's {self.num_labels} classes "
                f"(id2label 0..{self.num_labels - 1})."
            )
        image = self.decoder.decode(row[self.decoder.image_column])
        if image is None:
            if self.split is not None:
                return None
            image, label = Image.new("RGB", PLACEHOLDER_SIZE), IGNORE_INDEX
        return {"pixel_values": self.transform([image], [key])[0], "labels": label}

    def data_loader(self, args):
        """The training DataLoader of this stream for `TrainingArguments` `args` (Trainer's own would have accelerate
        split it between the processes again), keeping the position of what the training process consumes."""
        loader = torch.utils.data.DataLoader(
            self,
            batch_size=args.per_device_train_batch_size,
            collate_fn=collate_stream,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers and args.dataloader_num_workers > 0,
            prefetch_factor=args.dataloader_prefetch_factor if args.dataloader_num_workers else None,
        )
        return StreamLoader(loader, self)

    def position(self, args) -> dict:
        return {
            "world_size": self.split[3],
            "num_workers": args.dataloader_num_workers,
            "workers": {str(worker): position for worker, position in self.consumed.items()},
        }

    def resume(self, saved: dict, args, source: str) -> None:
        """Starts each worker at its position in `saved` (`position()` of the checkpoint `source`)."""
        ours = (self.split[3], args.dataloader_num_workers)
        theirs = (saved["world_size"], saved["num_workers"])
        if ours != theirs:
            raise SystemExit(
                f"error: {source} was saved by {theirs[0]} process(es) with {theirs[1]} data-loading worker(s) each, "
                f"this run has {ours[0]} with {ours[1]}: a stream resumes with the same numbers (--dataloader_num_workers)."
            )
        self.start = {int(worker): position for worker, position in saved["workers"].items()}
        self.consumed = dict(self.start)


def shuffle_buffer(rows, size: int, rng):
    """`rows` in random order: each row goes into a buffer of `size`, and a row drawn from it at random comes out."""
    buffer = []
    for row in rows:
        if len(buffer) < size:
            buffer.append(row)
            continue
        slot = int(rng.integers(size))
        row, buffer[slot] = buffer[slot], row
        yield row
    for slot in rng.permutation(len(buffer)):
        yield buffer[slot]


def collate_stream(examples: list[dict]) -> dict:
    """`default_data_collator` of the examples, and the stream position after the last of them."""
    from transformers import default_data_collator

    position = examples[-1][STREAM_POSITION]
    batch = default_data_collator([{k: v for k, v in e.items() if k != STREAM_POSITION} for e in examples])
    batch[STREAM_POSITION] = position
    return batch


class StreamLoader:
    """The training DataLoader of a `StreamedExamples`, handing Trainer the batches without their position, which
    it keeps in the stream's `consumed` (by worker)."""

    def __init__(self, loader, stream: StreamedExamples):
        self.loader, self.stream = loader, stream

    def __iter__(self):
        for batch in self.loader:
            worker, position = batch.pop(STREAM_POSITION)
            self.stream.consumed[worker] = position
            yield batch
        raise SystemExit(
            "error: the stream gave this process no examples: it has fewer shards than the processes x data-loading "
            "workers can share, or no image of its shards decodes."
        )


class StreamPositionCallback(TrainerCallback):
    """Saves each process's stream position with every checkpoint (`stream_state_rank<R>.json`) and starts the
    stream there when the run resumes from one."""

    def __init__(self, stream: StreamedExamples, resume_from: str | None = None):
        self.stream, self.resume_from = stream, resume_from

    def on_train_begin(self, args, state, control, **kwargs):
        if self.resume_from:
            path = Path(self.resume_from) / STREAM_STATE_FILE.format(rank=args.process_index)
            try:
                saved = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                raise SystemExit(f"error: cannot resume the stream: {path} is missing or damaged ({error}).") from None
            self.stream.resume(saved, args, str(self.resume_from))

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / STREAM_STATE_FILE.format(rank=args.process_index)
        path.write_text(json.dumps(self.stream.position(args)), encoding="utf-8")


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


def with_transform(
    dataset, image_column: str, label_column: str, transform, bad_image_policy: str = "skip", evaluation=False
):
    """`dataset` yielding `pixel_values` and `labels`, decoded and transformed on the fly by `DecodedExamples`;
    `transform` receives the batch's images and their row indices."""
    return DecodedExamples(dataset, image_column, label_column, transform, bad_image_policy, evaluation)


def streamed_splits(raw, data_args: DataArguments, num_labels: int, train, evaluate, training_args):
    """(training stream, evaluation stream) of the streams `raw` (`load_streams`) with the transforms `train` and
    `evaluate`."""
    columns = (data_args.image_column_name, data_args.label_column_name)
    split = (training_args.seed, data_args.shuffle_buffer_size, training_args.process_index, training_args.world_size)
    policy = data_args.bad_image_policy
    return (
        StreamedExamples(raw["train"], *columns, train, num_labels, policy, split=split),
        StreamedExamples(raw["validation"], *columns, evaluate, num_labels, policy),
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
