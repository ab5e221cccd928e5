"""Where a run's images come from (`ceit_hf.data.sources`): the bundled digits, image folders and their index, local
dataset folders as `--dataset_name` reads them (splits, columns, held-out validation, sample limits), class names and
labels, and the crop size chosen from the data; each refusal word for word."""

import logging
import re
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from ceit_hf.data import sources
from ceit_hf.data.sources import DataSource, load_image_datasets


CLASSES = ["a", "b", "c"]


@pytest.fixture
def data_log(ceit_log):
    """The records of `ceit_hf.data` down to INFO (the index's and the decoding's reports)."""
    logger = logging.getLogger("ceit_hf.data")
    level = logger.level
    logger.setLevel(logging.INFO)
    yield ceit_log
    logger.setLevel(level)


def png(side: int = 8, value: int = 0) -> Image.Image:
    return Image.new("L", (side, side), value)


def folder_of(root: Path, counts: dict, side: int = 8) -> Path:
    """An image folder: `counts[name]` PNGs in each class folder `root/name`."""
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            png(side, i).save(root / name / f"{i}.png")
    return root


def dataset_folder(root: Path, splits: dict, class_label: bool = True, readme: str | None = None) -> Path:
    """A local dataset folder as `datasets` writes one: `splits[name]` rows in `name-00000-of-00001.parquet` (label
    i % 3 of row i, a ClassLabel or plain integers); with `readme`, a README.md of that YAML front matter."""
    label = datasets.ClassLabel(names=CLASSES) if class_label else datasets.Value("int64")
    features = datasets.Features({"image": datasets.Image(), "label": label})
    root.mkdir(parents=True)
    for name, count in splits.items():
        rows = {"image": [png(value=i) for i in range(count)], "label": [i % 3 for i in range(count)]}
        datasets.Dataset.from_dict(rows, features=features).to_parquet(root / f"{name}-00000-of-00001.parquet")
    if readme is not None:
        (root / "README.md").write_text(f"---\n{readme}---\n")
    return root


def test_the_bundled_digits_are_sklearns_in_bytes_split_80_20_by_class_the_same_in_every_run():
    from sklearn.datasets import load_digits

    raw = load_image_datasets(DataSource(), seed=7)
    again = sources.digits_dataset()
    assert list(raw) == ["train", "validation"] and (len(raw["train"]), len(raw["validation"])) == (1437, 360)
    assert raw["train"].features["label"].names == [str(i) for i in range(10)]
    for split in ("train", "validation"):  # whatever the run's seed: the one split of the bundled data
        assert raw[split]["label"] == again[split]["label"]
        assert all(
            np.array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(raw[split][:20]["image"], again[split][:20]["image"])
        )
    per_class = np.bincount(raw["validation"]["label"]) / np.bincount(load_digits().target)
    assert np.all(np.abs(per_class - 0.2) < 0.01)
    image = raw["train"][0]["image"]
    assert (image.mode, image.size) == ("L", (8, 8))
    grey_levels = {round(k * 255 / 16) for k in range(17)}
    values = {v for row in raw["train"][:200]["image"] for v in np.asarray(row).ravel().tolist()}
    assert values <= grey_levels and max(values) == 255


def test_hidden_entries_are_not_classes_or_images_as_datasets_and_torchvision_leave_them(tmp_path):
    folder = folder_of(tmp_path / "images", {"a": 2, "b": 1})
    for hidden in (".cache", "__MACOSX", "a/.thumbnails", "a/__MACOSX"):
        (folder / hidden).mkdir()
        png().save(folder / hidden / "0.png")
    png().save(folder / "b" / ".0.png")
    dataset, counts = sources.image_folder_dataset(str(folder), "--train_dir", cache_dir=str(tmp_path / "cache"))
    assert dataset.features["label"].names == ["a", "b"] and counts == [2, 1]


def test_a_training_folder_that_is_a_file_missing_or_without_images_is_one_line(tmp_path):
    expected = "expected one sub-folder of images per class"
    file = tmp_path / "file.png"
    png().save(file)
    for path, what in ((file, "is not a folder"), (tmp_path / "missing", "does not exist")):
        message = f"error: --train_dir {str(path)!r} {what}: {expected} ({path}/<class>/<image>)."
        with pytest.raises(SystemExit, match=f"^{re.escape(message)}$"):
            sources.scan_image_folder(str(path), "--train_dir")
    folder = folder_of(tmp_path / "images", {"a": 1})
    (folder / "b").mkdir()
    (folder / "b" / "notes.txt").write_text("")
    message = (
        f"error: --train_dir {str(folder)!r}: the class folder 'b' holds no images (expected files such as .png or "
        ".jpg)."
    )
    with pytest.raises(SystemExit, match=f"^{re.escape(message)}$"):
        sources.scan_image_folder(str(folder), "--train_dir")


def test_an_index_of_another_version_or_cut_short_is_made_again(tmp_path, monkeypatch, data_log):
    """An index written by another version of the package, or whose rows are fewer than its description counts (a
    damaged file), is not trusted: the folder is indexed again, whole."""
    import pyarrow as pa

    folder = folder_of(tmp_path / "images", {"a": 2, "b": 2})
    cache = str(tmp_path / "cache")
    sources.image_folder_dataset(str(folder), "--train_dir", cache_dir=cache)
    monkeypatch.setattr(sources, "INDEX_VERSION", sources.INDEX_VERSION + 1)
    assert len(sources.image_folder_dataset(str(folder), "--train_dir", cache_dir=cache)[0]) == 4
    (index,) = (tmp_path / "cache").glob(f"*/*/{sources.INDEX_FILE}")
    with pa.memory_map(str(index)) as source:
        table = pa.ipc.open_stream(source).read_all()
    with pa.OSFile(str(index), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.slice(0, 3))
    dataset, counts = sources.image_folder_dataset(str(folder), "--train_dir", cache_dir=cache)
    assert len(dataset) == 4 and counts == [2, 2]
    reports = [
        r.getMessage().split("(")[1].split(" in ")[0] for r in data_log if "images in 2 classes" in r.getMessage()
    ]
    assert reports == ["indexed", "indexed", "indexed"]


def test_the_index_decodes_is_kept_in_the_cache_given_and_stays_in_memory_where_it_cannot_be_kept(tmp_path, data_log):
    """The index's rows decode as images (made or reused); it is kept under the cache folder given, rewritten when a
    folder changes, and kept in memory with a warning where the cache cannot be written. Each load reports how."""
    folder = folder_of(tmp_path / "images", {"a": 2, "b": 2})
    cache = tmp_path / "cache"
    made, _ = sources.image_folder_dataset(str(folder), "--train_dir", cache_dir=str(cache))
    reused, _ = sources.image_folder_dataset(str(folder), "--train_dir", cache_dir=str(cache))
    for dataset in (made, reused):
        assert dataset.features == sources.index_features(["a", "b"])
        assert dataset[3]["image"].size == (8, 8) and dataset[3]["label"] == 1
    (index,) = cache.glob(f"*/*/{sources.INDEX_FILE}")
    png().save(folder / "b" / "2.png")
    assert len(sources.image_folder_dataset(str(folder), "--train_dir", cache_dir=str(cache))[0]) == 5
    assert len(list(cache.glob(f"*/*/{sources.INDEX_FILE}*"))) == 1  # rewritten in place, nothing left beside it
    assert sources.load_index(str(folder), index.parent)[1] == [2, 3]  # the new one kept
    assert sources.load_index(str(tmp_path / "other"), index.parent) is None  # another folder's

    blocked = tmp_path / "not_a_folder"
    blocked.write_text("")
    dataset, _ = sources.image_folder_dataset(str(folder), "--train_dir", cache_dir=str(blocked))
    assert len(dataset) == 5 and not dataset.cache_files and dataset[0]["image"].size == (8, 8)
    messages = [record.getMessage() for record in data_log]
    how = [
        re.fullmatch(rf"{re.escape(str(folder))}: (\d) images in 2 classes \((.*) in ([\d.]+) s\)", m)
        for m in messages
    ]
    reports = [(int(m[1]), m[2]) for m in how if m]
    assert reports == [(4, "indexed"), (4, "index reused"), (5, "indexed"), (5, "indexed")]
    assert all(float(m[3]) < 60 for m in how if m)
    (warning,) = [m for m in messages if m.startswith("Cannot keep")]
    assert re.fullmatch(
        rf"Cannot keep the index of {re.escape(str(folder))} in {re.escape(str(blocked))}/ceit_hf_image_folders/\w+ "
        r"\(.*Errno.*\): it stays in memory\.",
        warning,
    )


def test_images_are_decoded_up_front_up_to_the_limit_and_the_unreadable_named(tmp_path, data_log):
    folder = folder_of(tmp_path / "images", {"a": 4, "b": 4})
    for name in ("a/0.png", "a/1.png", "a/2.png", "a/3.png", "b/0.png", "b/1.png", "b/2.png"):
        (folder / name).write_bytes(b"\x89PNG cut")
    load = sources.image_folder_dataset
    assert len(load(str(folder), "--train_dir", cache_dir=str(tmp_path / "c"))[0]) == 8  # by default: not decoded
    assert len(load(str(folder), "--train_dir", decode_limit=7, cache_dir=str(tmp_path / "c"))[0]) == 8
    expected = (
        f"error: --train_dir {str(folder)!r}: 7 file(s) are not readable images: a/0.png, a/1.png, a/2.png, a/3.png, "
        "b/0.png and 2 more."
    )
    with pytest.raises(SystemExit, match=f"^{re.escape(expected)}$"):
        load(str(folder), "--train_dir", decode_limit=8, cache_dir=str(tmp_path / "c"))
    assert f"Decoding the 8 images of {folder} (--verify_images_limit 8)" in [r.getMessage() for r in data_log]
    one = folder_of(tmp_path / "one", {"a": 1})
    (one / "a" / "0.png").write_bytes(b"\x89PNG cut")
    assert len(load(str(one), "--train_dir", cache_dir=str(tmp_path / "c"))[0]) == 1  # not decoded by default
    for bad, named in ((5, "a/0.png, a/1.png, a/2.png, a/3.png, b/0.png."), (6, "b/0.png and 1 more.")):
        few = folder_of(tmp_path / f"bad{bad}", {"a": 4, "b": 4})
        for name in ("a/0.png", "a/1.png", "a/2.png", "a/3.png", "b/0.png", "b/1.png")[:bad]:
            (few / name).write_bytes(b"\x89PNG cut")
        with pytest.raises(SystemExit, match=f"{bad} file\\(s\\) are not readable images: .*{re.escape(named)}$"):
            load(str(few), "--train_dir", decode_limit=8, cache_dir=str(tmp_path / "c"))


def test_a_held_out_split_is_stratified_the_same_for_a_seed_and_refused_for_classes_of_one_image(tmp_path):
    kept, held = sources.stratified_split([100, 7, 2, 1], 0.15, seed=0)
    assert np.array_equal(held, sources.stratified_split([100, 7, 2, 1], 0.15, seed=0)[1])
    assert np.bincount(np.searchsorted([100, 107, 109], held, side="right"), minlength=4).tolist() == [15, 2, 1, 0]
    folder = folder_of(tmp_path / "images", {"a": 4, "b": 4})
    source = DataSource(train_dir=str(folder), cache_dir=str(tmp_path / "cache"))
    first, second = (load_image_datasets(source, seed=3)["validation"] for _ in range(2))
    assert first[:]["image"] and [np.asarray(i).max() for i in first["image"]] == [
        np.asarray(i).max() for i in second["image"]
    ]
    assert (tmp_path / "cache" / "ceit_hf_image_folders").is_dir()  # the index in the cache given
    alone = folder_of(tmp_path / "ones", {"a": 1, "b": 1})
    expected = (
        f"error: --train_dir {str(alone)!r}: too few images to hold out --train_val_split 0.15 of them for validation "
        "(expected classes of at least 2 images, or give --validation_dir)."
    )
    with pytest.raises(SystemExit, match=f"^{re.escape(expected)}$"):
        load_image_datasets(DataSource(train_dir=str(alone), cache_dir=str(tmp_path / "cache")), seed=0)


def test_a_validation_folder_is_checked_as_the_training_one_and_unknown_classes_named(tmp_path):
    train = folder_of(tmp_path / "train", dict.fromkeys("abcdef", 1))
    validation = tmp_path / "validation"
    validation.mkdir()
    source = DataSource(train_dir=str(train), validation_dir=str(validation), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(SystemExit, match=f"^error: --validation_dir {re.escape(repr(str(validation)))} is empty: "):
        load_image_datasets(source, seed=0)
    folder_of(validation, {"a": 1, "x": 1})
    expected = (
        f"error: --validation_dir {str(validation)!r}: the class folder(s) ['x'] are not classes of --train_dir "
        "(expected the same class sub-folders as the training images: ['a', 'b', 'c', 'd', 'e']...)."
    )
    with pytest.raises(SystemExit, match=f"^{re.escape(expected)}$"):
        load_image_datasets(source, seed=0)
    assert len(list((tmp_path / "cache").glob(f"*/*/{sources.INDEX_FILE}"))) == 2  # each folder's index kept there
    five = folder_of(tmp_path / "five", dict.fromkeys("abcde", 1))
    strangers = folder_of(tmp_path / "strangers", dict.fromkeys("uvwxyz", 1))
    expected = (
        f"error: --validation_dir {str(strangers)!r}: the class folder(s) ['u', 'v', 'w', 'x', 'y'] are not classes "
        "of --train_dir (expected the same class sub-folders as the training images: ['a', 'b', 'c', 'd', 'e'])."
    )
    with pytest.raises(SystemExit, match=f"^{re.escape(expected)}$"):
        source = DataSource(train_dir=str(five), validation_dir=str(strangers), cache_dir=str(tmp_path / "cache"))
        load_image_datasets(source, seed=0)


@pytest.mark.parametrize("name", ["val", "valid", "test"])
def test_a_validation_split_under_another_name_is_taken_as_it_is(tmp_path, name):
    """A dataset whose held-out split is named val, valid or test (by its card's configs) is evaluated on it, not
    on a part of the training split; --dataset_config_name picks the config, --cache_dir holds what is prepared."""
    readme = (
        "configs:\n- config_name: default\n  data_files:\n  - split: train\n    path: train-*.parquet\n"
        f"  - split: {name}\n    path: held-*.parquet\n"
        "- config_name: small\n  data_files:\n  - split: train\n    path: held-*.parquet\n"
        "  - split: validation\n    path: held-*.parquet\n"
    )
    folder = dataset_folder(tmp_path / "data", {"train": 12, "held": 5}, readme=readme)
    raw = load_image_datasets(DataSource(dataset_name=str(folder), cache_dir=str(tmp_path / "cache")), seed=0)
    assert list(raw) == ["train", "validation"] and (len(raw["train"]), len(raw["validation"])) == (12, 5)
    assert any((tmp_path / "cache").rglob("*.arrow"))
    small = load_image_datasets(DataSource(dataset_name=str(folder), dataset_config_name="small"), seed=0)
    assert (len(small["train"]), len(small["validation"])) == (5, 5)
    readme = "".join(f"  - split: {split}\n    path: {split}-*.parquet\n" for split in ("train", "validation", name))
    both = dataset_folder(
        tmp_path / "both",
        {"train": 6, "validation": 4, name: 3},
        readme=f"configs:\n- config_name: default\n  data_files:\n{readme}",
    )
    assert len(load_image_datasets(DataSource(dataset_name=str(both)), seed=0)["validation"]) == 4  # its own first


@pytest.mark.parametrize("class_label", [True, False])
def test_a_dataset_without_validation_holds_out_part_of_its_training_split(tmp_path, class_label):
    """--train_val_split of the rows held out, by class where the labels are a ClassLabel, the same rows for a seed;
    --max_train_samples / --max_eval_samples cut each split after that (the training rows shuffled by the seed)."""
    folder = dataset_folder(tmp_path / "data", {"train": 36}, class_label=class_label)
    source = DataSource(dataset_name=str(folder), train_val_split=1 / 3)  # (datasets' own default is 0.25)
    raw = load_image_datasets(source, seed=0)
    assert list(raw) == ["train", "validation"] and (len(raw["train"]), len(raw["validation"])) == (24, 12)
    if class_label:
        assert np.bincount(raw["validation"]["label"]).tolist() == [4, 4, 4]
    assert raw["validation"]["label"] == load_image_datasets(source, seed=0)["validation"]["label"]
    ids = lambda split: [np.asarray(image).max() for image in split["image"]]  # noqa: E731 (row i's pixels are i)
    cut = DataSource(dataset_name=str(folder), train_val_split=1 / 3, max_train_samples=5, max_eval_samples=4)
    first, second, other = (load_image_datasets(cut, seed) for seed in (1, 1, 2))
    assert list(first) == ["train", "validation"] and (len(first["train"]), len(first["validation"])) == (5, 4)
    assert ids(first["train"]) == ids(second["train"]) != ids(other["train"])
    assert ids(first["validation"]) == ids(load_image_datasets(source, 1)["validation"])[:4]
    if class_label:  # 4 rows: class c has one
        few = dataset_folder(tmp_path / "few", {"train": 4})
        expected = (
            "error: the dataset has no validation split, and --train_val_split 0.15 of its training split cannot be "
            "held out for one (The least populated class in label column has only 1 member"
        )
        ending = "expected classes of at least 2 examples, or a split named 'validation'."
        with pytest.raises(SystemExit, match=f"^{re.escape(expected)}.*{re.escape(ending)}$"):
            load_image_datasets(DataSource(dataset_name=str(few)), seed=0)


def test_sample_limits_leave_no_cache_files_beside_the_data(tmp_path):
    """--max_train_samples shuffles the training rows in memory: nothing is written beside the folder's index (nor
    beside a dataset's prepared files) at each run."""
    folder = folder_of(tmp_path / "images", {"a": 4, "b": 4})
    source = DataSource(train_dir=str(folder), cache_dir=str(tmp_path / "cache"), max_train_samples=3)
    raw = load_image_datasets(source, seed=0)
    assert len(raw["train"]) == 3
    assert [path.name for path in (tmp_path / "cache").rglob("*") if path.is_file()] == [sources.INDEX_FILE]


def test_a_dataset_folder_is_refused_without_a_train_split_or_with_a_missing_column(tmp_path):
    only_test = dataset_folder(tmp_path / "only_test", {"test": 3})
    with pytest.raises(SystemExit, match=r"^error: the dataset has no 'train' split \(splits: \['test'\]\)\.$"):
        load_image_datasets(DataSource(dataset_name=str(only_test)), seed=0)
    folder = dataset_folder(tmp_path / "data", {"train": 3, "validation": 3})
    expected = (
        "error: column 'img' is not in the dataset (columns: ['image', 'label']); pass --image_column_name / "
        "--label_column_name."
    )
    with pytest.raises(SystemExit, match=f"^{re.escape(expected)}$"):
        load_image_datasets(DataSource(dataset_name=str(folder), image_column_name="img"), seed=0)


def test_a_streams_validation_split_is_cut_to_max_eval_samples_and_its_absence_explained(tmp_path):
    folder = dataset_folder(tmp_path / "data", {"train": 6, "validation": 6})
    raw = load_image_datasets(DataSource(dataset_name=str(folder), streaming=True, max_eval_samples=4), seed=0)
    assert len(list(raw["validation"])) == 4 and len(list(raw["train"])) == 6
    bare = dataset_folder(tmp_path / "bare", {"train": 6})
    raw = load_image_datasets(
        DataSource(dataset_name=str(bare), streaming=True, needs_validation=False, max_eval_samples=4), 0
    )
    assert list(raw) == ["train"]
    expected = (
        "error: --streaming needs a validation split to evaluate (splits: ['train']); expected a split named "
        "'validation', 'val', 'valid' or 'test' (for local shards: files named validation-*.parquet, ...), or "
        "--eval_strategy no to train without one."
    )
    with pytest.raises(SystemExit, match=f"^{re.escape(expected)}$"):
        load_image_datasets(DataSource(dataset_name=str(bare), streaming=True), seed=0)


def test_the_dataset_options_reach_datasets_load_dataset(monkeypatch):
    """--dataset_config_name, --streaming, --cache_dir, --token and --trust_remote_code, as `load_dataset` takes
    them (a private Hub dataset needs the token)."""
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: calls.append((args, kwargs)) or "loaded")
    source = DataSource(
        dataset_name="someone/private", dataset_config_name="full", streaming=True, cache_dir="/cache", token="hf_x"
    )
    assert sources.load_hub_dataset(source) == "loaded"
    options = {"streaming": True, "cache_dir": "/cache", "token": "hf_x", "trust_remote_code": False}
    assert calls == [(("someone/private", "full"), options)]


def test_a_dataset_the_hub_cannot_give_is_one_line(monkeypatch):
    from datasets.exceptions import DatasetNotFoundError

    def failing(error):
        def load_dataset(*args, **kwargs):
            raise error

        return load_dataset

    source = DataSource(dataset_name="someone/data")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets, "load_dataset", failing(ConnectionError("timed out")))
    with pytest.raises(
        SystemExit, match=r"^error: --dataset_name 'someone/data': cannot reach the Hub \(timed out\)\.$"
    ):
        sources.load_hub_dataset(source)
    monkeypatch.setattr(datasets, "load_dataset", failing(DatasetNotFoundError("no such dataset")))
    expected = (
        "error: --dataset_name 'someone/data' is neither a local folder nor a dataset on the Hub (no such dataset)."
    )
    with pytest.raises(SystemExit, match=f"^{re.escape(expected)}$"):
        sources.load_hub_dataset(source)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets, "load_dataset", failing(ConnectionError("offline")))
    expected = (
        "error: --dataset_name 'someone/data' is not found locally (no such folder, nor in the datasets cache) and the "
        "Hub is offline (HF_HUB_OFFLINE=1): expected a local dataset folder, a dataset loaded once online, or a run "
        "with HF_HUB_OFFLINE unset."
    )
    with pytest.raises(SystemExit, match=f"^{re.escape(expected)}$"):
        sources.load_hub_dataset(source)


def test_class_names_come_from_the_flag_before_the_file_beside_the_data_and_are_checked(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "classes.txt").write_text("one\ntwo\n\nthree\n")
    of = lambda **given: sources.class_names_of(DataSource(dataset_name=str(folder), **given))  # noqa: E731
    assert of() == ["one", "two", "three"] and of(class_names=" x, y ,z") == ["x", "y", "z"]
    assert sources.class_names_of(DataSource()) is None
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(SystemExit, match=r"^error: --class_names '.*latin1.txt' cannot be read \(.*utf-8.*\)\.$"):
        of(class_names=str(tmp_path / "latin1.txt"))
    names = ",".join(["n"] * 12)
    expected = (
        f"error: --class_names {names!r}: expected distinct class names, label 0's first (separated by commas, or a "
        f"file of one name per line); got {['n'] * 10}."
    )
    with pytest.raises(SystemExit, match=f"^{re.escape(expected)}$"):
        of(class_names=names)
    (folder / "classes.txt").write_text("same\nsame\n")
    with pytest.raises(SystemExit, match="^error: the class names file '.*classes.txt': expected distinct"):
        of()


def test_label_names_of_a_class_label_plain_integers_or_given_names_and_the_labels_checked():
    labelled = datasets.Dataset.from_dict(
        {"label": [0, 2, 1]}, features=datasets.Features({"label": datasets.ClassLabel(names=CLASSES)})
    )
    assert sources.label_names(labelled, "label") == CLASSES == sources.label_names(labelled, "label", CLASSES)
    expected = (
        "error: the class names given (['x', 'y', 'z']) differ from those of the dataset's label column 'label' "
        "(['a', 'b', 'c']): expected the same, or none given."
    )
    with pytest.raises(SystemExit, match=f"^{re.escape(expected)}$"):
        sources.label_names(labelled, "label", ["x", "y", "z"])
    plain = datasets.Dataset.from_dict({"label": [2, 0, 1, 1]})
    assert sources.label_names(plain, "label") == ["0", "1", "2"]
    assert sources.label_names(plain, "label", ["x", "y", "z"]) == ["x", "y", "z"]
    for labels in ([0, 2], [True, False], list(range(1, 13))):
        got = sorted(set(labels))[:10]
        with pytest.raises(ValueError, match=re.escape(f"must be a ClassLabel or the integers 0..K-1; got {got}.")):
            sources.label_names(datasets.Dataset.from_dict({"label": labels}), "label")
    stream = datasets.Dataset.from_dict({"label": [0, 1]}).to_iterable_dataset()
    assert sources.label_names(stream, "label", ["x", "y"]) == ["x", "y"]
    expected = (
        "error: --streaming needs the class names: the label column 'label' is Value('int64'), expected a ClassLabel "
        "(datasets keeps its names in the dataset card's dataset_info or in parquet files it wrote), --class_names "
        "a,b,c (or a file of one name per line), or a file classes.txt beside the shards."
    )
    with pytest.raises(SystemExit, match=f"^{re.escape(expected)}$"):
        sources.label_names(stream, "label")
    unknown = datasets.IterableDataset.from_generator(lambda: iter([{"label": 0}]))  # features known once read
    assert unknown.features is None and sources.label_names(unknown, "label", ["x"]) == ["x"]
    with pytest.raises(
        SystemExit, match=r"^error: --streaming needs the class names: the label column 'label' is None"
    ):
        sources.label_names(unknown, "label")
    many = [f"n{i}" for i in range(12)]
    expected = (
        f"error: the class names given ({many[:10]}) differ from those of the dataset's label column 'label' "
        f"({many[1:11]}): expected the same, or none given."
    )
    shifted = datasets.Dataset.from_dict(
        {"label": [0]}, features=datasets.Features({"label": datasets.ClassLabel(names=many[1:])})
    )
    with pytest.raises(SystemExit, match=f"^{re.escape(expected)}$"):
        sources.label_names(shifted, "label", many)
    outside = datasets.Dataset.from_dict({"label": list(range(15))})
    expected = (
        "The train split has labels [3, 4, 5, 6, 7, 8, 9, 10, 11, 12] outside the model's 3 classes (id2label 0..2)."
    )
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        sources.check_labels(outside, "label", 3, "train")


def test_the_crop_size_is_the_median_shorter_side_of_the_first_images_in_steps_of_16(tmp_path, data_log):
    def rows(sides: list, bad: int = 0) -> datasets.Dataset:
        images = [{"bytes": b"not an image", "path": f"{i}.png"} for i in range(bad)]
        for side in sides:
            image = Image.new("RGB", (side + 5, side))
            images.append({"bytes": image_bytes(image), "path": None})
        return datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))

    size = sources.image_size_from_data
    assert size(rows([120] * 3), "image") == 128 and size(rows([20, 40, 40]), "image") == 32
    assert size(rows([600] * 2), "image") == 224 and size(rows([32] * 64 + [200] * 80), "image") == 32
    assert size(rows([], bad=2), "image") == 224  # none decodes: the official size
    assert size(rows([120], bad=1), "image") == 128
    stream = datasets.IterableDataset.from_generator(lambda: iter([{"image": Image.new("RGB", (50, 48))}] * 3))
    assert stream.features is None and size(stream, "image") == 48  # a stream's features known once read
    warnings = [r.getMessage() for r in data_log if r.levelno == logging.WARNING]
    assert warnings[-1].startswith("Leaving 0.png out of the image size choice: UnidentifiedImageError: ")


def image_bytes(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
