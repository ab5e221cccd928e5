# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Hub model cards for CeiT: the official variants' (`model_cards/`), trained models' and LoRA adapters', rendered
from the Jinja template `ceit_hf/cards/ceit.md` by huggingface_hub's `ModelCard.from_template`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .configuration_ceit import PRESETS


TEMPLATE_PATH = Path(__file__).parent / "cards" / "ceit.md"
EXAMPLE_IMAGE_URL = "http://images.cocodataset.org/val2017/000000039769.jpg"
REPORTED_SOURCE_NAME = "Yuan et al., ICCV 2021 (arXiv:2103.11816) and the official repository README"
CARD_TAGS = ["ceit", "vision", "image-classification", "custom_code"]
PLACEHOLDER_NAMESPACE = "your-name"  # the usage code's repo id when the Hub repo is not known yet
# The usage code of every card names its repository on this line (`repo_id = "namespace/name"`).
REPO_ID_LINE = re.compile(r'^repo_id = "([^"\n]+)"$', re.MULTILINE)
# Around the sentence of an adapter's card that names its base model, which the upload rewrites.
BASE_NOTE_START, BASE_NOTE_END = "<!-- ceit_hf:base-model -->", "<!-- /ceit_hf:base-model -->"


class ReportedResult(NamedTuple):
    """One row of the authors' ImageNet-1k table (validation set, single center crop, in percent)."""

    epochs: int
    top1: float
    top5: float


class Variant(NamedTuple):
    """An official CeiT variant: its exact size and the authors' results."""

    num_parameters: int
    results: tuple[ReportedResult, ...]


# Exact parameter counts (tests/hub/test_model_cards.py re-counts them); the authors' results, not measured here.
VARIANTS: dict[str, Variant] = {
    "ceit_tiny_patch16_224": Variant(6_356_904, (ReportedResult(300, 76.4, 93.4),)),
    "ceit_small_patch16_224": Variant(24_204_840, (ReportedResult(300, 82.0, 95.9),)),
    "ceit_base_patch16_224": Variant(94_405_416, (ReportedResult(100, 81.9, 95.8), ReportedResult(150, 82.5, 95.6))),
    "ceit_tiny_patch16_384": Variant(6_429_864, (ReportedResult(300, 78.8, 94.7),)),
    "ceit_small_patch16_384": Variant(24_350_760, (ReportedResult(300, 83.3, 96.5),)),
}


def _render(metadata: dict, height: int, width: int, **values) -> ModelCard:
    data = ModelCardData(pipeline_tag="image-classification", license="apache-2.0", **metadata)
    crop = max(height, width)  # the resized image must hold the crop in both directions
    card = ModelCard.from_template(
        data,
        template_path=TEMPLATE_PATH,
        header=data.to_yaml(original_order=["library_name", "pipeline_tag", "license", "tags", "datasets"]),
        example_image_url=EXAMPLE_IMAGE_URL,
        crop_size=crop,
        crop_size_text=f"{height}x{width}",
        resize_size=int(256 / 224 * crop),
        **values,
    )
    card.text = card.text.rstrip("\n") + "\n"  # Jinja drops the template's final newline
    return card


def _eval_results(top1: float, top5: float | None, dataset_id: str, dataset_name: str, **source) -> list[EvalResult]:
    common = dict(
        task_type="image-classification",
        task_name="Image Classification",
        dataset_type=dataset_id,
        dataset_name=dataset_name,
        dataset_split="validation",
        **source,
    )
    metrics = [("accuracy", "Top-1 accuracy", top1), ("top_5_accuracy", "Top-5 accuracy", top5)]
    return [EvalResult(metric_type=t, metric_name=n, metric_value=v, **common) for t, n, v in metrics if v is not None]


def variant_card(name: str) -> str:
    """The full model card (README.md text) of an official CeiT variant, e.g. "ceit_tiny_patch16_224"."""
    if name not in VARIANTS:
        raise ValueError(f"Unknown CeiT variant {name!r}; expected one of {sorted(VARIANTS)}.")
    variant, preset = VARIANTS[name], PRESETS[name]
    results = sorted(variant.results, key=lambda r: r.epochs)
    headline, image_size = results[-1], preset["image_size"]  # the model-index uses the longest-trained run
    source = {"source_name": REPORTED_SOURCE_NAME, "source_url": "https://arxiv.org/abs/2103.11816"}
    eval_results = _eval_results(headline.top1, headline.top5, "imagenet-1k", "ImageNet-1k", **source)
    metadata = {"library_name": "transformers", "tags": CARD_TAGS, "datasets": ["imagenet-1k"], "model_name": name}
    size_name = {"ceit_tiny": "Tiny", "ceit_small": "Small", "ceit_base": "Base"}[name.rsplit("_patch", 1)[0]]
    card = _render(
        {**metadata, "eval_results": eval_results},
        image_size,
        image_size,
        variant=True,
        name=name,
        display_name=f"CeiT-{size_name[0]}",
        repo_id=f"ceit-hf/{name}",
        size_name=size_name,
        hidden_size=preset["d_model"],
        num_heads=preset["encoder_num_heads"],
        depth=preset["num_encoder_blocks"],
        image_size=image_size,
        num_patch_tokens=(image_size // (4 * preset["patch_size"])) ** 2,
        num_parameters=f"{variant.num_parameters:,} ({variant.num_parameters / 1e6:.1f}M)",
        results=results,
        headline=headline,
        epochs_text=" or ".join(str(r.epochs) for r in results),
    )
    return str(card)


def card_repo_id(text: str) -> str | None:
    """The Hub repository a ceit_hf card (README.md) says it is published as, None when it names none."""
    match = REPO_ID_LINE.search(text)
    return None if match is None or match.group(1).startswith(f"{PLACEHOLDER_NAMESPACE}/") else match.group(1)


def adapter_base_note(base_model: str | None, hub_id: str | None) -> str:
    """The card's sentence naming a LoRA adapter's base model: its Hub repo `hub_id`, else the local `base_model`."""
    if hub_id:
        text = (
            f"Base model: [`{hub_id}`](https://huggingface.co/{hub_id}), named in `adapter_config.json`; the code "
            "below downloads it."
        )
    else:
        text = (
            f"Base model: `{base_model}`, a local folder on the machine the adapter was trained on, not a Hub "
            "repository. The adapter needs that model: load your copy of it as `base_id` in the code below, "
            "or publish it and upload the adapter again with `scripts/push_to_hub.py --base_model_id NAMESPACE/NAME`."
        )
    return f"{BASE_NOTE_START}\n{text}\n{BASE_NOTE_END}"


def adapter_card_for_upload(text: str, base_model: str | None, hub_id: str | None) -> str:
    """A LoRA adapter's card as uploaded: its base model sentence, and `hub_id` (if any) in the metadata and text."""
    note = adapter_base_note(base_model, hub_id)
    if BASE_NOTE_START in text and BASE_NOTE_END in text:
        head, rest = text.split(BASE_NOTE_START, 1)
        text = head + note + rest.split(BASE_NOTE_END, 1)[1]
    elif "\n## " in text:
        head, rest = text.split("\n## ", 1)
        text = f"{head.rstrip()}\n\n{note}\n\n## {rest}"
    else:
        text = f"{text.rstrip()}\n\n{note}\n"
    if not hub_id:
        return text
    card = ModelCard(text)
    card.data.base_model = hub_id
    if base_model and base_model != hub_id:
        card.text = card.text.replace(f"`{base_model}`", f"`{hub_id}`")
    return str(card)


def training_card(
    *,
    model_name: str,
    repo_id: str | None,
    model,
    base_model: str | None,
    preset: str | None,
    dataset: str | None,
    data_description: str,
    metrics: dict,
    hyperparameters: dict,
    command: str,
) -> ModelCard:
    """The card of a model (or, for a PeftModel, LoRA adapter) trained by `scripts/train.py` from scratch or from
    `base_model`; `dataset` is the Hub dataset id (None for local data); top-5 accuracy only with at least 5 classes."""
    config = model.config
    top1 = round(100 * metrics["eval_accuracy"], 2)
    top5 = metrics.get("eval_top5_accuracy") if config.num_labels >= 5 else None
    top5 = None if top5 is None else round(100 * top5, 2)
    hub_base = base_model if base_model and not Path(base_model).exists() else None  # a local folder is no Hub id
    lora = next(iter(getattr(model, "peft_config", {}).values()), None)  # a PeftModel: the card of its adapter
    metadata = {
        "library_name": "peft" if lora else "transformers",
        "tags": CARD_TAGS + ["lora"] if lora else CARD_TAGS,
        "datasets": [dataset] if dataset else None,
        "base_model": hub_base,
        "model_name": model_name,
        "eval_results": _eval_results(top1, top5, dataset or "imagefolder", data_description),
    }
    official = getattr(config, "preset_name", None)  # CeiTConfig.preset_name; None for other classifiers
    architecture = f"`{preset}` modified" if preset else "the small CeiT of `ceit_hf.training.small_config`"
    return _render(
        metadata,
        *config.image_hw,
        variant=False,
        model_name=model_name,
        repo_id=repo_id or f"{PLACEHOLDER_NAMESPACE}/{model_name}",
        base_model=base_model,
        data_description=data_description if dataset else f"`{data_description}`",
        num_labels=config.num_labels,
        architecture_name=f"the official `{official}`" if official else architecture,
        num_parameters=f"{model.num_parameters():,}",
        top1=top1,
        top5=top5,
        hyperparameters=hyperparameters,
        command=command,
        lora_rank=lora.r if lora else None,
        base_note=adapter_base_note(base_model, hub_base) if lora else None,
        id2label={int(k): v for k, v in config.id2label.items()},
    )


def generated_cards() -> dict[str, str]:
    """File name -> content of the repository's `model_cards/` folder."""
    return {f"{name}.md": variant_card(name) for name in VARIANTS}
