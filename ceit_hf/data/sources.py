# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Where the images of a run come from, as a `DatasetDict` with `train` and `validation` splits: scikit-learn's
bundled digits, image folders (indexed in one directory walk, the index kept and reused), a Hub dataset or local
dataset folder (downloaded, or as streams with `streaming`). Each is checked before any training: a bad folder
fails with one line saying what was expected, a small one is decoded in full."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import IterableDataset as TorchIterableDataset

from .decoding import IMAGE_ERRORS, BadImageError, check_bad_image_policy, decode_image, undecoded
from .loader import cpus_per_process


logger = logging.getLogger("ceit_hf.data")
DIGITS_IMAGE_SIZE = 32


@dataclass(frozen=True)
class DataSource:
    """What to load and how (plain values: `ceit_hf.training` fills it from its command line). The `*_name` fields
    are columns of the dataset; `cache_dir`, `token` and `trust_remote_code` go to `datasets.load_dataset`."""

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
    # a stream trains without a validation split when nothing evaluates it
    needs_validation: bool = True
    # the names of integer labels: "a,b,c" or a file of one name per line (`class_names_of`)
    class_names: str | None = None
    cache_dir: str | None = None
    token: str | None = None
    trust_remote_code: bool = False

    @property
    def bundled(self) -> bool:
        """No data given: the bundled digits."""
        return self.dataset_name is None and self.train_dir is None


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

INDEX_VERSION = 2  # 2: one file, the description in its schema metadata
INDEX_FILE = "index.arrow"
INDEX_METADATA = b"ceit_hf_index"


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
    memory-mapped from there; kept in memory when `store` cannot be written. One file, `index.arrow`, holding the
    description (root, classes, counts, folder times) in its schema's metadata, written under a name of its own
    and renamed into place: a reader sees a complete index or none, and writers that share a cache (the nodes of
    one run) never write to the same temporary file."""
    import datasets
    import pyarrow as pa

    features = index_features(index.classes)
    count = len(index.paths)
    image = pa.StructArray.from_arrays(
        [pa.nulls(count, pa.binary()), pa.array(index.paths, pa.string())], names=["bytes", "path"]
    )
    description = {
        "version": INDEX_VERSION,
        "root": index.root,
        "classes": index.classes,
        "counts": index.counts,
        "folders": index.folders,
    }
    schema = features.arrow_schema
    schema = schema.with_metadata({**(schema.metadata or {}), INDEX_METADATA: json.dumps(description).encode()})
    table = pa.Table.from_arrays([image, pa.array(index.labels)], schema=schema)
    temporary = store / f"{INDEX_FILE}.{uuid.uuid4().hex}"
    try:
        store.mkdir(parents=True, exist_ok=True)
        with pa.OSFile(str(temporary), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(temporary, store / INDEX_FILE)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink()
        logger.warning("Cannot keep the index of %s in %s (%s): it stays in memory.", index.root, store, error)
        return datasets.Dataset(table)
    return datasets.Dataset.from_file(str(store / INDEX_FILE))


def load_index(root: str, store: Path):
    """(the dataset, images per class) of the index kept in `store` for the folder `root`, or None when there is
    none or a folder walked for it has changed since (a `stat` per folder, none per file)."""
    import datasets
    import pyarrow as pa

    path = store / INDEX_FILE
    try:
        with pa.memory_map(str(path)) as source:
            description = json.loads(pa.ipc.open_stream(source).schema.metadata[INDEX_METADATA])
        if description.get("version") != INDEX_VERSION or description["root"] != root:
            return None
        for relative, mtime in description["folders"].items():
            if os.stat(os.path.join(root, relative)).st_mtime_ns != mtime:
                return None
        dataset = datasets.Dataset.from_file(str(path))
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowInvalid):
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


def load_image_datasets(source: DataSource, seed: int):  # noqa: C901 (a branch per data source)
    """The train and validation splits, from the Hub (downloaded, or streamed with --streaming), image folders (the
    first process of each machine indexes them, the others reuse its index), or the bundled digits."""
    import datasets

    check_bad_image_policy(source.bad_image_policy)
    if source.streaming:
        return load_streams(source)
    if source.dataset_name is not None:
        raw = load_hub_dataset(source)
    elif source.train_dir is not None:
        with main_process_first() as first:
            raw = image_folders(source, source.verify_images_limit if first else 0, seed)
    else:
        raw = digits_dataset(seed=0)

    if "train" not in raw:
        raise SystemExit(f"error: the dataset has no 'train' split (splits: {list(raw)}).")
    check_columns(raw["train"], source)
    if not name_validation_split(raw):
        stratify = isinstance(raw["train"].features[source.label_column_name], datasets.ClassLabel)
        split = raw["train"].train_test_split(
            test_size=source.train_val_split,
            seed=seed,
            stratify_by_column=source.label_column_name if stratify else None,
        )
        raw["train"], raw["validation"] = split["train"], split["test"]
    if source.max_train_samples is not None:
        kept = min(source.max_train_samples, len(raw["train"]))
        raw["train"] = raw["train"].shuffle(seed=seed, keep_in_memory=True).select(range(kept), keep_in_memory=True)
    if source.max_eval_samples is not None:
        raw["validation"] = raw["validation"].select(
            range(min(source.max_eval_samples, len(raw["validation"]))), keep_in_memory=True
        )
    return raw


def image_folders(source: DataSource, decode_limit: int, seed: int):
    """--train_dir and --validation_dir (else a stratified part of the training images held out) as a
    `DatasetDict`, from their indexes (`image_folder_dataset`)."""
    import datasets

    train, counts = image_folder_dataset(source.train_dir, "--train_dir", decode_limit, source.cache_dir)
    if source.validation_dir is None:  # held out from the index's rows, which are grouped by class
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
    classes = train.features["label"].names
    return datasets.DatasetDict(
        train=train, validation=with_classes(validation, validation_counts, classes, "--validation_dir", folder)
    )


def load_hub_dataset(source: DataSource, streaming: bool = False):
    """`--dataset_name` (a Hub id or a local folder) with `datasets.load_dataset`, downloaded or as streams. A Hub
    id that cannot be had (offline and not in the cache, or not on the Hub) fails in one line naming it."""
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    name = source.dataset_name
    try:
        return datasets.load_dataset(
            name,
            source.dataset_config_name,
            cache_dir=source.cache_dir,
            token=source.token,
            trust_remote_code=source.trust_remote_code,
            streaming=streaming,
        )
    except ConnectionError as error:
        if datasets.config.HF_HUB_OFFLINE:
            raise SystemExit(
                f"error: --dataset_name {name!r} is not found locally (no such folder, nor in the datasets cache) and "
                "the Hub is offline (HF_HUB_OFFLINE=1): expected a local dataset folder, a dataset loaded once online, "
                "or a run with HF_HUB_OFFLINE unset."
            ) from None
        raise SystemExit(f"error: --dataset_name {name!r}: cannot reach the Hub ({error}).") from None
    except DatasetNotFoundError as error:
        raise SystemExit(
            f"error: --dataset_name {name!r} is neither a local folder nor a dataset on the Hub ({error})."
        ) from None


def name_validation_split(raw) -> bool:
    """Whether `raw` has a validation split: `validation`, else its `val`, `valid` or `test` split renamed so."""
    if "validation" not in raw:
        validation = next((s for s in ("val", "valid", "test") if s in raw), None)
        if validation is None:
            return False
        raw["validation"] = raw.pop(validation)
    return True


def check_columns(dataset, source: DataSource) -> None:
    columns = dataset.column_names
    if columns is None:  # a stream whose columns are known only once it is read
        return
    for column in (source.image_column_name, source.label_column_name):
        if column not in columns:
            raise SystemExit(
                f"error: column {column!r} is not in the dataset (columns: {columns}); pass "
                "--image_column_name / --label_column_name."
            )


def load_streams(source: DataSource):
    """The train and validation splits of `--dataset_name` as `datasets` streams (`IterableDataset`): a Hub id or a
    local folder of shards (parquet files, webdataset tars), read as they are consumed."""
    raw = load_hub_dataset(source, streaming=True)
    if "train" not in raw:
        raise SystemExit(f"error: the dataset has no 'train' split (splits: {list(raw)}).")
    check_columns(raw["train"], source)
    if not name_validation_split(raw):
        if not source.needs_validation:  # nothing evaluates it (--eval_strategy no): training alone
            return raw
        raise SystemExit(
            f"error: --streaming needs a validation split to evaluate (splits: {list(raw)}); expected a split named "
            "'validation', 'val', 'valid' or 'test' (for local shards: files named validation-*.parquet, ...), or "
            "--eval_strategy no to train without one."
        )
    if source.max_eval_samples is not None:
        raw["validation"] = raw["validation"].take(source.max_eval_samples)
    return raw


CLASS_NAMES_FILE = "classes.txt"


def class_names_of(source: DataSource) -> list[str] | None:
    """The class names given for integer labels: `--class_names` (names separated by commas, or a file of one name
    per line), else the file `classes.txt` (one name per line) in the local --dataset_name folder, beside its shards;
    else None. Label i is the i-th name."""
    given, where = source.class_names, "--class_names"
    if given is None and source.dataset_name is not None:
        beside = os.path.join(source.dataset_name, CLASS_NAMES_FILE)
        if os.path.isfile(beside):
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
    """Class names from a `ClassLabel` column (`class_names`, when given, must be the same), else `class_names`
    (`class_names_of`: the labels are their indices), else the sorted distinct label values (a stream needs a
    ClassLabel or `class_names`: it is not read in full before training)."""
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


def image_size_from_data(train, column: str, samples: int = 64) -> int:
    """The crop size for a model trained from scratch on `train`: the median shorter side of its first `samples`
    images rounded to a multiple of 16 (what the default stem and patch need), 32 to 224. Images that fail to
    decode are left out."""
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
