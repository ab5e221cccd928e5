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
from ceit_hf.model_card import (
    DERIVED_FIELDS,
    TEMPLATE_FIELDS,
    VARIANTS,
    generated_cards,
    render_template,
    template_placeholders,
    template_text,
    variant_card,
)


REPO_ROOT = Path(__file__).resolve().parent.parent
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

FIELDS = {
    "model_name": "ceit-tiny-cifar10",
    "repo_id": "someone/ceit-tiny-cifar10",
    "base_model": "ceit-hf/ceit_tiny_patch16_224",
    "preset": "ceit_tiny_patch16_224",
    "dataset": "uoft-cs/cifar10",
    "eval_split": "test",
    "num_labels": 10,
    "eval_top1": 97.314,  # rendered rounded to 2 decimals
    "eval_top5": 99.9,
    "image_size": 224,
    "hyperparameters": {"learning_rate": 5e-5, "num_train_epochs": 3, "per_device_train_batch_size": 64},
    "command": ["python", "scripts/train.py", "--dataset_name", "uoft-cs/cifar10", "--output_dir", "out dir"],
}


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def _metrics(card: ModelCard) -> dict[str, float]:
    return {result.metric_type: result.metric_value for result in card.data.eval_results}


def test_variants_match_presets():
    assert set(VARIANTS) == set(PRESETS) == set(REPORTED)
    assert {f"{name}.md" for name in PRESETS} | {"template.md"} == set(generated_cards())


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
    assert (CARDS_DIR / "template.md").read_text(encoding="utf-8") == template_text()


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


# ------------------------------------------------------------------------------------------------ template


def test_template_placeholders_are_the_documented_fields():
    assert template_placeholders() == set(TEMPLATE_FIELDS) | set(DERIVED_FIELDS)


def test_template_renders_with_all_fields():
    text = render_template(**FIELDS)
    assert "{{" not in text and "}}" not in text
    card = ModelCard(text)
    data = card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "image-classification"
    assert data.license == "apache-2.0"
    assert data.tags == ["ceit", "vision", "image-classification", "custom_code"]
    assert data.datasets == ["uoft-cs/cifar10"]
    assert data.model_name == "ceit-tiny-cifar10"
    assert _metrics(card) == {"accuracy": 97.31, "top_5_accuracy": 99.9}
    assert {result.dataset_split for result in data.eval_results} == {"test"}
    body = card.text
    assert "# ceit-tiny-cifar10" in body
    assert "`ceit-hf/ceit_tiny_patch16_224`" in body and "preset `ceit_tiny_patch16_224`" in body
    assert "| `test` | 97.31 | 99.9 |" in body
    assert "| `learning_rate` | 5e-05 |" in body and "| `num_train_epochs` | 3 |" in body
    assert "python scripts/train.py --dataset_name uoft-cs/cifar10 --output_dir 'out dir'" in body
    assert "predict 10 classes" in body
    assert "| input size | 224x224 pixels |" in body
    assert "resize the shorter side to 256 pixels" in body and "center-crop 224x224" in body
    for block in _python_blocks(body):
        compile(block, "fine-tuned card", "exec")
    assert '"someone/ceit-tiny-cifar10"' in body


def test_template_renders_other_sizes_and_text_fields():
    fields = dict(
        FIELDS,
        image_size=384,
        hyperparameters="learning rate 1e-4, 10 epochs",
        command="python train.py",
        dataset='weird: "name" # with YAML characters',
    )
    card = ModelCard(render_template(**fields))
    assert card.data.datasets == ['weird: "name" # with YAML characters']
    assert "resize the shorter side to 438 pixels" in card.text and "center-crop 384x384" in card.text
    assert "learning rate 1e-4, 10 epochs" in card.text


def test_template_missing_fields_are_named():
    fields = dict(FIELDS)
    del fields["eval_top5"], fields["command"]
    with pytest.raises(ValueError, match="missing field\\(s\\): eval_top5, command"):
        render_template(**fields)
    with pytest.raises(ValueError) as error:
        render_template()
    for name in TEMPLATE_FIELDS:
        assert name in str(error.value)


def test_template_unknown_and_invalid_fields_are_named():
    with pytest.raises(ValueError, match="unknown field\\(s\\): learning_rate"):
        render_template(**FIELDS, learning_rate=1e-3)
    with pytest.raises(ValueError, match="eval_top1 must be an accuracy in percent"):
        render_template(**dict(FIELDS, eval_top1=0.97 * 1000))
    with pytest.raises(ValueError, match="num_labels"):
        render_template(**dict(FIELDS, num_labels=0))
    with pytest.raises(ValueError, match="repo_id"):
        render_template(**dict(FIELDS, repo_id='bad "id"'))
