# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""The committed model cards (`model_cards/`) and their single source, `ceit_hf.model_card`. Offline."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from ceit_hf import PRESETS, CeiTConfig, CeiTForImageClassification
from ceit_hf.model_card import VARIANTS, generated_cards, training_card, variant_card


REPO_ROOT = Path(__file__).resolve().parents[2]
CARDS_DIR = REPO_ROOT / "model_cards"

# The authors' ImageNet-1k table (reference file), top-1 / top-5; ceit_base's model-index uses its 150-epoch row.
REPORTED = {
    "ceit_tiny_patch16_224": (76.4, 93.4),
    "ceit_small_patch16_224": (82.0, 95.9),
    "ceit_base_patch16_224": (82.5, 95.6),
    "ceit_tiny_patch16_384": (78.8, 94.7),
    "ceit_small_patch16_384": (83.3, 96.5),
}
PARAMETERS = {
    "ceit_tiny_patch16_224": 6_356_904,
    "ceit_small_patch16_224": 24_204_840,
    "ceit_base_patch16_224": 94_405_416,
    "ceit_tiny_patch16_384": 6_429_864,
    "ceit_small_patch16_384": 24_350_760,
}


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def _metrics(card: ModelCard) -> dict[str, float]:
    return {result.metric_type: result.metric_value for result in card.data.eval_results}


def test_variants_match_presets():
    assert set(VARIANTS) == set(PRESETS) == set(REPORTED)
    assert {f"{name}.md" for name in PRESETS} == set(generated_cards())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_committed_card_metadata(name):
    card = ModelCard.load(CARDS_DIR / f"{name}.md")
    data = card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "image-classification"
    assert data.license == "apache-2.0"
    assert data.tags == ["ceit", "vision", "image-classification", "custom_code"]
    assert data.datasets == ["imagenet-1k"]
    assert data.model_name == name
    assert len(data.eval_results) == 2
    for result in data.eval_results:
        assert result.task_type == "image-classification"
        assert result.dataset_type == "imagenet-1k"
        assert result.dataset_split == "validation"
        assert result.source_url == "https://arxiv.org/abs/2103.11816"
    top1, top5 = REPORTED[name]
    assert _metrics(card) == {"accuracy": top1, "top_5_accuracy": top5}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_committed_card_body(name):
    text = (CARDS_DIR / f"{name}.md").read_text(encoding="utf-8")
    top1, top5 = REPORTED[name]
    assert f"{PARAMETERS[name]:,}" in text
    assert f"| `{name}` | " in text and f" | {top1} | {top5} |" in text
    assert "not measured by this project" in text
    for part in ("Image-to-Tokens (I2T)", "Locally-enhanced feed-forward (LeFF)", "class-token attention (LCA)"):
        assert part in text
    assert f"int(256 / 224 * {PRESETS[name]['image_size']})" in text
    assert "AdamW" in text and "Mixup 0.8" in text
    assert "@inproceedings{" in text and "Incorporating Convolution Designs into Visual Transformers" in text
    if name == "ceit_base_patch16_224":  # both reported rows, the 150-epoch one in the metadata
        assert "| `ceit_base_patch16_224` | 100 | 81.9 | 95.8 |" in text
        assert "| `ceit_base_patch16_224` | 150 | 82.5 | 95.6 |" in text


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_usage_snippets_are_valid_python(name):
    text = (CARDS_DIR / f"{name}.md").read_text(encoding="utf-8")
    blocks = _python_blocks(text)
    assert len(blocks) == 2
    for block in blocks:
        compile(block, f"{name}.md", "exec")
    joined = "\n".join(blocks)
    assert f'"ceit-hf/{name}"' in joined
    assert "AutoImageProcessor.from_pretrained(repo_id, trust_remote_code=True)" in joined
    assert "AutoModelForImageClassification.from_pretrained(repo_id, trust_remote_code=True)" in joined
    assert f'pipeline("image-classification", model="ceit-hf/{name}", trust_remote_code=True)' in joined


def test_committed_files_equal_generated():
    for file_name, text in generated_cards().items():
        path = CARDS_DIR / file_name
        assert path.is_file(), f"{path} is missing: run scripts/make_model_cards.py"
        assert path.read_text(encoding="utf-8") == text, f"{path} is stale: run scripts/make_model_cards.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("make_model_cards", REPO_ROOT / "scripts" / "make_model_cards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_model_cards_script(tmp_path, capsys):
    script = _load_script()
    assert script.main(["--check"]) == 0
    # In an empty folder, --check fails and a normal run writes exactly the generated files.
    assert script.main(["--check", "--out_dir", str(tmp_path)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert script.main(["--out_dir", str(tmp_path)]) == 0
    assert {p.name: p.read_text(encoding="utf-8") for p in tmp_path.iterdir()} == generated_cards()
    assert script.main(["--check", "--out_dir", str(tmp_path)]) == 0


def test_parameter_counts_match_the_model():
    for name, variant in VARIANTS.items():
        with torch.device("meta"):
            model = CeiTForImageClassification(CeiTConfig.from_preset(name))
        assert sum(p.numel() for p in model.parameters()) == variant.num_parameters == PARAMETERS[name]


def test_variant_card_rejects_unknown_names():
    with pytest.raises(ValueError, match="ceit_tiny_patch16_224"):
        variant_card("ceit_huge_patch16_224")


# ------------------------------------------------------------------------------------------- trained models


def _trained(tmp_path, num_labels=10, **fields):
    from ceit_hf.training import small_config

    model = CeiTForImageClassification(small_config(32, {i: f"c{i}" for i in range(num_labels)}, num_encoder_blocks=1))
    values = {
        "model_name": "run",
        "repo_id": None,
        "model": model,
        "base_model": None,
        "preset": None,
        "dataset": None,
        "data_description": str(tmp_path / "images" / "train"),
        "metrics": {"eval_accuracy": 0.97314, "eval_top5_accuracy": 1.0},
        "hyperparameters": {"learning_rate": 1e-3, "epochs": 3},
        "command": "python scripts/train.py --output_dir 'out dir'",
    }
    card = training_card(**{**values, **fields})
    return ModelCard(str(card)), model


def test_from_scratch_card_on_local_images(tmp_path):
    card, model = _trained(tmp_path)
    data, body = card.data, card.text
    assert data.library_name == "transformers" and data.pipeline_tag == "image-classification"
    assert data.datasets is None and data.base_model is None  # a local folder is no Hub dataset or model
    assert _metrics(card) == {"accuracy": 97.31, "top_5_accuracy": 100.0}
    assert "trained from scratch" in body and "fine-tuned" not in body
    assert f"`{tmp_path / 'images' / 'train'}`" in body and "predict 10 classes" in body
    assert "| validation | 97.31 | 100.0 |" in body and f"({model.num_parameters():,} parameters)" in body
    assert "| `learning_rate` | 0.001 |" in body and "python scripts/train.py --output_dir 'out dir'" in body
    assert "| input size | 32x32 pixels |" in body and "{{" not in body and "{%" not in body
    for block in _python_blocks(body):
        compile(block, "trained card", "exec")
    assert '"your-name/run"' in body


def test_fine_tuned_card_on_a_hub_dataset_with_few_classes(tmp_path):
    card, _ = _trained(
        tmp_path,
        num_labels=3,
        base_model="ceit-hf/ceit_tiny_patch16_224",
        dataset="uoft-cs/cifar10",
        data_description="uoft-cs/cifar10",
        repo_id="me/ceit-c3",
        metrics={"eval_accuracy": 0.5, "eval_top5_accuracy": 1.0},
    )
    assert card.data.datasets == ["uoft-cs/cifar10"] and card.data.base_model == "ceit-hf/ceit_tiny_patch16_224"
    assert _metrics(card) == {"accuracy": 50.0}  # top-5 of 3 classes is always 100%: not reported
    assert "fine-tuned from `ceit-hf/ceit_tiny_patch16_224`" in card.text and "top-5" not in card.text
    assert "| validation | 50.0 |" in card.text and '"me/ceit-c3"' in card.text
