"""The training data pipeline: image files that fail to decode (checked up front, then skipped or stopped on during
training) and DataLoader workers that see each epoch's augmentation seed."""

import gc
import io
import logging
import logging.handlers
import re
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from transformers import Trainer, TrainingArguments, default_data_collator

from ceit_hf.data import default_num_workers, with_transform
from ceit_hf.data.transforms import SeededAugmentation
from ceit_hf.training import EpochCallback, main, parse_args


# Two steps of a one-block model on 16 images of 16x16 (all of them: 2 batches of 8), no evaluation or checkpoint
# in between: the final evaluation still runs over the validation folder.
TINY_RUN = (
    "--max_steps 2 --per_device_train_batch_size 8 --eval_strategy no --save_strategy no "
    "--config_overrides num_encoder_blocks=1 --disable_tqdm true --report_to none"
).split()
EARLY, LATE = "a/0.png", "b/7.png"  # the first file of the first class, the last file of the last one


def image_folder(root: Path, truncated: tuple[str, ...]) -> Path:
    """Two classes of 8 noise PNGs each, `truncated` ones cut after 60 bytes (a valid header, no pixels)."""
    rng = np.random.default_rng(0)
    for name in (f"{label}/{i}.png" for label in "ab" for i in range(8)):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
        if name in truncated:
            path.write_bytes(path.read_bytes()[:60])
    return root


@pytest.mark.parametrize("bad", [EARLY, LATE])
def test_a_truncated_image_is_named_before_training(tmp_path, bad):
    folder = image_folder(tmp_path / "images", truncated=(bad,))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as error:
        main(["--train_dir", str(folder), "--output_dir", str(out), *TINY_RUN])
    message = str(error.value.code)
    assert message == f"error: --train_dir '{folder}': 1 file(s) are not readable images: {bad}."
    assert not list(out.glob("checkpoint-*")) and not (out / "model.safetensors").exists()


def test_skip_trains_on_without_the_files_that_fail_to_decode_and_leaves_them_out_of_the_evaluation(tmp_path):
    """`--bad_image_policy skip`: in training the next decodable image takes a bad one's place (batches stay full);
    in evaluation a bad image is left out and counted (`eval_bad_images`, in the log and all_results.json), so the
    score is the folder's without it: what validate.py gives on the folder with the bad files removed."""
    import json
    import shutil

    from ceit_hf import evaluation

    folder = image_folder(tmp_path / "images", truncated=(EARLY, LATE))
    out = tmp_path / "out"
    logger = logging.getLogger("ceit_hf")  # (it does not propagate to the root logger, where caplog listens)
    records = logging.handlers.BufferingHandler(capacity=10_000)
    logger.addHandler(records)
    try:
        metrics = main(
            ["--train_dir", str(folder), "--validation_dir", str(folder), "--output_dir", str(out)]
            + ["--verify_images_limit", "0", "--dataloader_num_workers", "0", *TINY_RUN]
        )
    finally:
        logger.removeHandler(records)
    assert np.isfinite(metrics["eval_loss"]) and (out / "model.safetensors").is_file()
    warnings = [r.getMessage() for r in records.buffer if r.levelno == logging.WARNING]
    skipped = [message for message in warnings if message.startswith("Skipping")]
    left_out = [message for message in warnings if message.startswith("Leaving out of the evaluation")]
    # each bad file once in training (16 images in 2 steps of 8) and once in the evaluation
    for bad in (EARLY, LATE):
        assert sum(str(folder / bad) in message for message in skipped) == 1, skipped
        assert sum(str(folder / bad) in message for message in left_out) == 1, left_out
    assert any("2 so far in this process" in message for message in skipped)
    assert any(str(folder / EARLY) in message and "image size" in message for message in warnings)
    results = json.loads((out / "all_results.json").read_text())
    assert metrics["eval_bad_images"] == results["eval_bad_images"] == 2
    clean = shutil.copytree(folder, tmp_path / "clean")
    for bad in (EARLY, LATE):
        (clean / bad).unlink()
    alone = evaluation.main(["--model", str(out), "--validation_dir", str(clean), "--no_optimize"])
    assert alone["num_images"] == 14
    assert metrics["eval_accuracy"] == pytest.approx(alone["eval_accuracy"], abs=1e-9)


def test_stop_fails_naming_a_validation_file_that_fails_to_decode(tmp_path):
    """`--bad_image_policy stop`: a bad image met only in the evaluation ends the run naming it."""
    train = image_folder(tmp_path / "train", truncated=())
    validation = image_folder(tmp_path / "val", truncated=(LATE,))
    with pytest.raises(SystemExit) as error:
        main(
            ["--train_dir", str(train), "--validation_dir", str(validation), "--output_dir", str(tmp_path / "out")]
            + ["--verify_images_limit", "0", "--bad_image_policy", "stop", "--dataloader_num_workers", "0"]
            + TINY_RUN
        )
    assert re.fullmatch(
        rf"error: cannot decode {re.escape(str(validation / LATE))} \(OSError: .*\)\.", error.value.code
    )


@pytest.mark.parametrize("workers", [0, 1])  # with 1, the error crosses from the DataLoader worker process
def test_stop_fails_naming_the_file_that_fails_to_decode(tmp_path, workers, monkeypatch):
    # The failed run's DataLoader iterator is in a reference cycle (the traceback's): the garbage collector frees it
    # after its queues, and torch then waits its whole status-check interval (5 s) for the worker to stop.
    monkeypatch.setattr(torch.utils.data._utils, "MP_STATUS_CHECK_INTERVAL", 0.1)
    folder = image_folder(tmp_path / "images", truncated=(EARLY, LATE))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as error:
        main(
            [
                "--train_dir",
                str(folder),
                "--output_dir",
                str(out),
                "--verify_images_limit",
                "0",
                "--bad_image_policy",
                "stop",
                "--dataloader_num_workers",
                str(workers),
                *TINY_RUN,
            ]
        )
    message = str(error.value.code)
    assert re.fullmatch(rf"error: cannot decode {re.escape(str(folder))}/({EARLY}|{LATE}) \(OSError: .*\)\.", message)
    assert not (out / "model.safetensors").exists()
    del error
    gc.collect()  # with the shorter interval
    with pytest.raises(SystemExit, match=r"error: --bad_image_policy must be one of \('skip', 'stop'\), got 'drop'"):
        main(["--train_dir", str(folder), "--output_dir", str(out), "--bad_image_policy", "drop", *TINY_RUN])


def test_a_folder_is_indexed_once_as_torchvision_does_and_the_index_is_reused_until_a_folder_changes(
    tmp_path, monkeypatch
):
    """The index lists what torchvision's ImageFolder lists (the same files, the same class numbers), is kept in the
    cache and reused by the next load without a walk of the folder, and is rebuilt when a file is added (at the top
    of a class folder or deeper)."""
    from torchvision.datasets import ImageFolder

    from ceit_hf.data import sources as data

    folder = image_folder(tmp_path / "images", truncated=())
    (folder / "b" / "nested").mkdir()
    Image.new("RGB", (8, 8)).save(folder / "b" / "nested" / "x.png")
    (folder / "a" / "notes.txt").write_text("not an image")
    cache = tmp_path / "cache"

    def load():
        dataset, counts = data.image_folder_dataset(str(folder), "--train_dir", decode_limit=0, cache_dir=str(cache))
        paths = dataset.data.column("image").combine_chunks().field("path").to_pylist()
        return sorted(zip(paths, dataset.data.column("label").to_pylist())), counts, dataset

    listed, counts, dataset = load()
    assert listed == sorted(ImageFolder(str(folder)).samples) and counts == [8, 9]
    assert dataset.features["label"].names == ["a", "b"] and dataset.cache_files  # memory-mapped from the cache

    walks = []
    scan = data.scan_image_folder
    monkeypatch.setattr(data, "scan_image_folder", lambda *args: walks.append(args) or scan(*args))
    assert load()[:2] == (listed, counts) and walks == []
    for added in ("a/8.png", "b/nested/y.png"):
        Image.new("RGB", (8, 8)).save(folder / added)
        again, counts, _ = load()
        assert (str(folder / added), "ab".index(added[0])) in again and len(again) == len(listed) + 1
        listed = again
    assert len(walks) == 2 and counts == [9, 10]


def test_validation_folder_labels_follow_the_training_classes_and_a_split_is_stratified(tmp_path):
    """A --validation_dir missing a class keeps the training folder's class numbers (by name); a class the training
    folder lacks is refused naming it. Without --validation_dir each class gives ceil(15%) of its images."""
    from ceit_hf.data.sources import DataSource, load_image_datasets, stratified_split

    train = image_folder(tmp_path / "train", truncated=())
    (train / "c").mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8)).save(train / "c" / f"{i}.png")
    validation = tmp_path / "val"
    (validation / "c").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(validation / "c" / "0.png")
    args = DataSource(
        train_dir=str(train), validation_dir=str(validation), verify_images_limit=0, cache_dir=str(tmp_path / "cache")
    )
    raw = load_image_datasets(args, seed=0)
    assert raw["validation"]["label"] == [2] and raw["validation"].features["label"].names == ["a", "b", "c"]
    (validation / "d").mkdir()
    Image.new("RGB", (8, 8)).save(validation / "d" / "0.png")
    with pytest.raises(SystemExit, match=r"--validation_dir .*the class folder\(s\) \['d'\] are not classes of"):
        load_image_datasets(args, seed=0)

    raw = load_image_datasets(
        DataSource(train_dir=str(train), verify_images_limit=0, cache_dir=str(tmp_path / "cache")), 0
    )
    assert sorted(raw["validation"]["label"]) == [0, 0, 1, 1, 2] and len(raw["train"]) == 15
    kept, held = stratified_split([100, 7, 1], 0.15, seed=0)
    assert np.bincount(np.searchsorted([100, 107], held, side="right"), minlength=3).tolist() == [15, 2, 0]
    assert sorted([*kept, *held]) == list(range(108)) and not set(kept) & set(held)
    assert not np.array_equal(held, stratified_split([100, 7, 1], 0.15, seed=1)[1])


def test_data_loader_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    _, _, _, args = parse_args(["--output_dir", str(tmp_path), "--train_dir", str(tmp_path)])
    assert args.dataloader_num_workers == default_num_workers() >= 0
    assert args.dataloader_persistent_workers == (default_num_workers() > 0)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert default_num_workers() == 63  # every core but the training process's: no cap where the cores exist
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")  # 4 CPUs for each of 16 local processes: 3 workers each
    assert default_num_workers() == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")  # 21 whole CPUs each (never a fraction of one)
    assert default_num_workers() == 20
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0}, raising=False)
    assert default_num_workers() == 0  # one CPU: loading in the training process
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.delattr("os.sched_getaffinity", raising=False)  # macOS, Windows: the CPU count
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert default_num_workers() == 7
    monkeypatch.setattr("os.cpu_count", lambda: None)  # unknown: one CPU
    assert default_num_workers() == 0
    _, _, _, args = parse_args(
        ["--output_dir", str(tmp_path), "--train_dir", str(tmp_path), "--dataloader_num_workers", "0"]
    )
    assert args.dataloader_num_workers == 0 and not args.dataloader_persistent_workers
    _, _, _, args = parse_args(["--output_dir", str(tmp_path)])  # the bundled digits: in the training process
    assert args.dataloader_num_workers == 0 and not args.dataloader_persistent_workers


# ------------------------------------------------------------------------------------ augmentation in workers


class Recorder(torch.nn.Module):
    """A one-parameter model that keeps the training batches it receives."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.batches = []

    def forward(self, pixel_values, labels):
        if self.training:
            self.batches.append((labels.tolist(), pixel_values.clone()))
        return {"loss": (self.scale * pixel_values).mean()}


def noise_images(count: int = 6):
    """`count` 8x8 images whose label is their row index; random erasing makes each augmentation distinct."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    images = [Image.new("RGB", (8, 8), (40 * i, 0, 0)) for i in range(count)]
    data = datasets.Dataset.from_dict({"image": images, "label": list(range(count))}, features=features)
    augmentation = SeededAugmentation(
        v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.RandomErasing(p=1.0, value="random")]),
        seed=0,
    )
    return data, augmentation


def train_with_workers(output_dir: Path, epochs: int, resume_from: str | None = None, **kwargs) -> list:
    """(labels, pixel values) of each training batch of a Trainer run with 2 persistent DataLoader workers."""
    data, augmentation = noise_images()
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=3,
        num_train_epochs=epochs,
        use_cpu=True,
        dataloader_num_workers=2,
        dataloader_persistent_workers=True,
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=True,
        logging_strategy="no",
        **{"save_strategy": "no", **kwargs},
    )
    model = Recorder()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=with_transform(data, "image", "label", augmentation),
        data_collator=default_data_collator,
        callbacks=[EpochCallback(augmentation)],
    )
    trainer.train(resume_from_checkpoint=resume_from)
    return model.batches


def test_persistent_workers_augment_each_epoch_anew(tmp_path):
    batches = train_with_workers(tmp_path, epochs=2)  # 6 images in batches of 3: 2 steps an epoch
    data, augmentation = noise_images()
    seen = []  # per epoch: example index -> the pixels the model received
    for epoch, epoch_batches in enumerate((batches[:2], batches[2:])):
        seen.append({label: pixels for labels, batch in epoch_batches for label, pixels in zip(labels, batch)})
        assert sorted(seen[epoch]) == list(range(6))
        augmentation.epoch = epoch
        for index in range(6):  # what the workers gave is this epoch's augmentation of the example
            assert torch.equal(seen[epoch][index], augmentation([data[index]["image"]], [index])[0]), (epoch, index)
    assert all(not torch.equal(seen[0][index], seen[1][index]) for index in range(6))


def test_a_resumed_run_receives_the_batches_of_the_uninterrupted_one(tmp_path):
    # 3 epochs of 2 steps, a checkpoint after step 3 (mid-epoch 1), then a run resumed from it
    full = train_with_workers(tmp_path / "a", epochs=3, save_strategy="steps", save_steps=3)
    resumed = train_with_workers(tmp_path / "b", epochs=3, resume_from=str(tmp_path / "a" / "checkpoint-3"))
    assert len(full) == 6 and len(resumed) == 3
    for (labels, pixels), (resumed_labels, resumed_pixels) in zip(full[3:], resumed):
        assert labels == resumed_labels and torch.equal(pixels, resumed_pixels)


def test_evaluation_names_a_file_that_fails_to_decode(tmp_path, monkeypatch):
    """validate.py decodes a small --validation_dir up front, and a larger one image by image: either way a truncated
    file ends the run with one line naming it (a score without it would not be the folder's)."""
    from ceit_hf import evaluation
    from ceit_hf.data import DataSource

    folder = image_folder(tmp_path / "val", truncated=(LATE,))
    model = Path(__file__).resolve().parents[1] / "fixtures" / "digits_model"
    with pytest.raises(SystemExit, match=rf"error: --validation_dir .*1 file\(s\) are not readable images: {LATE}"):
        evaluation.main(["--model", str(model), "--validation_dir", str(folder)])
    monkeypatch.setattr(DataSource, "verify_images_limit", 0)  # headers only, as for a folder of ImageNet's size
    with pytest.raises(SystemExit, match=rf"error: cannot decode .*{LATE} \(OSError"):
        evaluation.main(["--model", str(model), "--validation_dir", str(folder), "--batch_size", "4"])


# ------------------------------------------------------------------------------ decoding, in the training process


def png_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def image_rows(images: list[bytes], mode: str | None = None) -> datasets.Dataset:
    features = datasets.Features({"image": datasets.Image(mode=mode), "label": datasets.Value("int64")})
    rows = {"image": [{"bytes": b, "path": None} for b in images], "label": list(range(len(images)))}
    return datasets.Dataset.from_dict(rows, features=features)


def test_a_bad_image_in_training_gives_way_to_the_next_row_and_is_counted_and_named():
    from ceit_hf.data.decoding import DecodedExamples

    rows = image_rows([png_bytes(0), b"not an image", png_bytes(2), png_bytes(3)])
    examples = DecodedExamples(rows, "image", "label", transform=lambda images, keys: list(images))
    records = []  # a handler of its own: a training run earlier in the session has set up the package's logging
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger("ceit_hf.data").addHandler(handler)
    try:
        assert [example["labels"] for example in examples.__getitems__([1, 0, 3])] == [2, 0, 3]
    finally:
        logging.getLogger("ceit_hf.data").removeHandler(handler)
    assert examples.skipped == 1 and examples.last_skipped == "an image of 12 bytes"
    (warning,) = [record.getMessage() for record in records]
    assert re.fullmatch(
        r"Skipping an image of 12 bytes \(UnidentifiedImageError: cannot identify image file .*\), 1 so far in this "
        r"process \(--bad_image_policy skip\)",
        warning,
    )
    assert [example["labels"] for example in examples.__getitems__([5, 9])] == [2, 2]  # keys of row 1's repeats
    assert examples.skipped == 3
    assert examples[2]["labels"] == 2 and examples[2]["pixel_values"].size == (8, 8)


def test_a_dataset_where_no_image_decodes_is_refused_word_for_word():
    from ceit_hf.data.decoding import BadImageError, DecodedExamples, decode_image

    rows = image_rows([b"not an image", b"nor this"])
    examples = DecodedExamples(rows, "image", "label", transform=lambda images, keys: list(images))
    with pytest.raises(BadImageError) as refusal:
        examples.__getitems__([0])
    assert (
        str(refusal.value)
        == "error: no image of the dataset decodes: none can take the place of an image of 12 bytes."
    )
    with pytest.raises(BadImageError) as refusal:
        decode_image({"bytes": b"nor this", "path": "a/b.png"}, datasets.Image())
    assert refusal.value.name == "a/b.png" and refusal.value.reason.startswith("UnidentifiedImageError: ")
    assert str(refusal.value) == f"error: cannot decode a/b.png ({refusal.value.reason})."


def test_decoding_leaves_other_values_and_columns_as_they_are():
    from ceit_hf.data.decoding import DataError, decode_image, undecoded

    image = Image.new("RGB", (4, 4))
    assert decode_image(image, datasets.Image()) is image  # decoded already
    assert decode_image({"a": 1}, datasets.Value("int64")) == {"a": 1}  # not an image column
    rows = image_rows([png_bytes(0)], mode="L")
    assert undecoded(rows, "label") is rows
    feature = undecoded(rows, "image").features["image"]
    assert feature.mode == "L" and not feature.decode  # the column's mode kept for decoding later
    assert decode_image(undecoded(rows, "image")[0]["image"], rows.features["image"]).mode == "L"
    streamed = datasets.IterableDataset.from_generator(lambda: iter([{"image": 1}]))  # features unknown
    assert undecoded(streamed, "image") is streamed
    # from a DataLoader worker only the `error:` line is kept, all of it; a message without one stays whole
    assert str(DataError("Traceback ...\nBadImageError: error: cannot decode a.png (OSError: error: -3).")) == (
        "error: cannot decode a.png (OSError: error: -3)."
    )
    assert str(DataError("no marker here")) == "no marker here"
