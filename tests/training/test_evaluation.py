"""`scripts/validate.py` (`ceit_hf.evaluation`): dataset labels matched to the model's by class name, `--split`,
`--dtype` and `--device`, on a tiny CeiT whose scores are fixed by its classifier's bias (zero weights), so that
every accuracy is known by hand. (`--dtype bfloat16`: tests/models/test_inference.py; LoRA adapters:
tests/training/test_lora_end_to_end.py.)"""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image

from ceit_hf import CeiTForImageClassification, CeiTImageProcessor
from ceit_hf.evaluation import build_parser, label_mapping, main


NAMES = [str(d) for d in range(10)]
# The model's classes are the digits in reverse order (id 0 is "9"); its scores rank "3" > "5" > "7" > "1" > "0" >
# the other digits for every image.
RANKING = ["3", "5", "7", "1", "0", "2", "4", "6", "8", "9"]
# Images per class folder: 3 of "3", 2 of "5", 1 of each other digit (13): top-1 3/13, top-5 (3 5 7 1 0) 8/13.
COUNTS = {"3": 3, "5": 2}


def images(count: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in range(count)]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluation")
    id2label = {i: NAMES[9 - i] for i in range(10)}
    config = tiny_config(num_classes=10, id2label=id2label, label2id={name: i for i, name in id2label.items()})
    model = CeiTForImageClassification(config).eval()
    with torch.no_grad():
        model.classifier.weight.zero_()
        for score, name in enumerate(reversed(RANKING)):
            model.classifier.bias[config.label2id[name]] = float(score)
    model.save_pretrained(root / "model")
    CeiTImageProcessor(crop_size={"height": 32, "width": 32}).save_pretrained(root / "model")
    for name in NAMES:
        (root / "val" / name).mkdir(parents=True)
        for i, image in enumerate(images(COUNTS.get(name, 1), seed=int(name))):
            image.save(root / "val" / name / f"{i}.png")
    return {"model": root / "model", "val": root / "val", "root": root}


def test_dataset_labels_are_matched_to_the_model_labels_by_name(files):
    """The image folder's classes are sorted "0".."9", the model's run "9".."0": matched by name, class "3" is the
    model's id 6 (by index it would be the model's "6", and top-1 would be 1/13)."""
    results = main(["--model", str(files["model"]), "--validation_dir", str(files["val"]), "--device", "cpu"])
    assert results["num_images"] == 13 and results["device"] == "cpu" and results["dtype"] == "float32"
    assert results["eval_accuracy"] == pytest.approx(3 / 13) and results["eval_top5_accuracy"] == pytest.approx(8 / 13)


def test_label_mapping():
    import datasets

    from ceit_hf import CeiTConfig

    def dataset(names):
        features = datasets.Features({"label": datasets.ClassLabel(names=names)})
        return datasets.Dataset.from_dict({"label": list(range(len(names)))}, features=features)

    config = CeiTConfig(id2label={0: "cat", 1: "dog", 2: "bird"}, label2id={"cat": 0, "dog": 1, "bird": 2})
    assert label_mapping(dataset(["bird", "cat", "dog"]), "label", config).tolist() == [2, 0, 1]
    assert label_mapping(dataset(["dog", "cat"]), "label", config).tolist() == [1, 0]  # a subset of the classes
    assert label_mapping(dataset(["a", "b", "c"]), "label", config) is None  # other names: indices as they are
    with pytest.raises(SystemExit, match="the dataset has 4 classes, the model 3, and their names do not match"):
        label_mapping(dataset(["a", "b", "c", "d"]), "label", config)


def test_split(files):
    """`--split` picks the split of a `--dataset_name`; without it `validation`, else `test`."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})

    def write(folder, split, name, count):
        folder.mkdir(exist_ok=True)
        data = {"image": images(count, seed=count), "label": [NAMES.index(name)] * count}
        datasets.Dataset.from_dict(data, features=features).to_parquet(folder / f"{split}.parquet")

    three_splits, no_validation = files["root"] / "three_splits", files["root"] / "no_validation"
    for folder, splits in ((three_splits, ("train", "validation", "test")), (no_validation, ("train", "test"))):
        for split in splits:  # all "3" (top-1: right) but the test split, all "5" (top-1 wrong, top-5 right)
            write(folder, split, "5" if split == "test" else "3", {"train": 2, "validation": 3, "test": 4}[split])

    def evaluate(folder, *flags):
        results = main(["--model", str(files["model"]), "--dataset_name", str(folder), *flags])
        return results["num_images"], results["eval_accuracy"], results["eval_top5_accuracy"]

    assert evaluate(three_splits) == (3, 1.0, 1.0)
    assert evaluate(three_splits, "--split", "test") == (4, 0.0, 1.0)
    assert evaluate(three_splits, "--split", "train") == (2, 1.0, 1.0)
    assert evaluate(no_validation) == (4, 0.0, 1.0)
    with pytest.raises(SystemExit, match=r"split 'valid' is not in the dataset \(splits: \['train', 'validation', "):
        evaluate(three_splits, "--split", "valid")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_dtype(files, dtype):
    """`--dtype`: the model runs in that dtype (bfloat16: tests/models/test_inference.py), with the same results here."""
    results = main(["--model", str(files["model"]), "--validation_dir", str(files["val"]), "--dtype", dtype])
    assert results["dtype"] == dtype
    assert results["eval_accuracy"] == pytest.approx(3 / 13) and results["eval_top5_accuracy"] == pytest.approx(8 / 13)


def test_device_defaults_to_cuda_when_there_is_one_and_cpu_is_chosen_with_device(monkeypatch):
    assert build_parser().parse_args(["--model", "m"]).device == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert build_parser().parse_args(["--model", "m"]).device == "cuda"
    assert build_parser().parse_args(["--model", "m", "--device", "cpu"]).device == "cpu"
