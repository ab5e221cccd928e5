# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Hugging Face Hub model cards for CeiT.

This module is the single source of truth for every card the project publishes:

* `variant_card(name)` renders the card of one of the five official variants (`ceit_hf.PRESETS`); the files
  `model_cards/<variant>.md` of the source repository are generated from it by `scripts/make_model_cards.py`
  and a test checks that they have not drifted.
* `render_template(**fields)` fills the card of a model fine-tuned with this project (the training script calls it
  and writes the result to `README.md` next to the weights). The raw template, `template_text()`, is also written
  to `model_cards/template.md` for reading; it lives here so that an installed package needs no repository files.

Templates use `{{ name }}` placeholders. The fields a caller gives to `render_template` are `TEMPLATE_FIELDS`; a
few more (`DERIVED_FIELDS`) are computed from them. Inside the YAML header a value is written as a YAML scalar
(strings quoted and escaped), in the Markdown body as plain text.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .configuration_ceit import PRESETS


HUB_ORGANIZATION = "ceit-hf"
PAPER_URL = "https://arxiv.org/abs/2103.11816"
OFFICIAL_CODE_URL = "https://github.com/coeusguo/ceit"
CARD_LICENSE = "apache-2.0"
CARD_TAGS = ("ceit", "vision", "image-classification", "custom_code")
IMAGENET_DATASET_ID = "imagenet-1k"
EXAMPLE_IMAGE_URL = "http://images.cocodataset.org/val2017/000000039769.jpg"
REPORTED_SOURCE_NAME = "Yuan et al., ICCV 2021 (arXiv:2103.11816) and the official repository README"
TOP1_METRIC = ("accuracy", "Top-1 accuracy")
TOP5_METRIC = ("top_5_accuracy", "Top-5 accuracy")

# Metadata keys first in every header, in this order.
_HEADER_ORDER = ["library_name", "pipeline_tag", "license", "tags", "datasets"]


# --------------------------------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class ReportedResult:
    """One row of the authors' ImageNet-1k table (validation set, single center crop, in percent)."""

    epochs: int
    top1: float
    top5: float


@dataclass(frozen=True)
class Variant:
    """An official CeiT variant: its published name, display name, exact size and the authors' results."""

    name: str
    display_name: str
    num_parameters: int
    results: tuple[ReportedResult, ...]

    @property
    def preset(self) -> dict[str, Any]:
        return PRESETS[self.name]

    @property
    def hidden_size(self) -> int:
        return self.preset["d_model"]

    @property
    def num_heads(self) -> int:
        return self.preset["encoder_num_heads"]

    @property
    def depth(self) -> int:
        return self.preset["num_encoder_blocks"]

    @property
    def image_size(self) -> int:
        return self.preset["image_size"]

    @property
    def num_patch_tokens(self) -> int:
        # The I2T stem downsamples by 4 and the patch projection by `patch_size` more.
        return (self.image_size // (4 * self.preset["patch_size"])) ** 2

    @property
    def headline(self) -> ReportedResult:
        """The row used in the card's `model-index`: the longest-trained one."""
        return max(self.results, key=lambda result: result.epochs)

    @property
    def repo_id(self) -> str:
        return f"{HUB_ORGANIZATION}/{self.name}"


# Parameter counts are exact (counted on the official structure; `tests/test_model_cards.py` re-counts them on
# `CeiTForImageClassification`). Results are the authors' table, not measurements of this project.
VARIANTS: dict[str, Variant] = {
    variant.name: variant
    for variant in (
        Variant("ceit_tiny_patch16_224", "CeiT-T", 6_356_904, (ReportedResult(300, 76.4, 93.4),)),
        Variant("ceit_small_patch16_224", "CeiT-S", 24_204_840, (ReportedResult(300, 82.0, 95.9),)),
        Variant(
            "ceit_base_patch16_224",
            "CeiT-B",
            94_405_416,
            (ReportedResult(100, 81.9, 95.8), ReportedResult(150, 82.5, 95.6)),
        ),
        Variant("ceit_tiny_patch16_384", "CeiT-T", 6_429_864, (ReportedResult(300, 78.8, 94.7),)),
        Variant("ceit_small_patch16_384", "CeiT-S", 24_350_760, (ReportedResult(300, 83.3, 96.5),)),
    )
}


# ------------------------------------------------------------------------------------------- shared sections
# Plain strings with `{{ name }}` placeholders (no f-strings, so code braces need no escaping).

_ARCHITECTURE = """\
CeiT (Convolution-enhanced image Transformer) keeps the outline of ViT/DeiT (a class token, learned absolute
position embeddings, a stack of pre-norm Transformer encoder blocks and a linear classifier) and adds
convolutions in three places, where they help most with locality and low-level features:

- **Image-to-Tokens (I2T) stem.** Instead of cutting raw pixels into 16x16 patches, a small convolutional stem
  (7x7 stride-2 convolution to 64 channels, BatchNorm, 3x3 stride-2 max-pool) extracts low-level features at a
  quarter of the input resolution; 4x4 patches of that feature map are projected to tokens. Every token still
  covers 16x16 input pixels, hence `patch16` in the official variant names.
- **Locally-enhanced feed-forward (LeFF).** In every encoder block the MLP is replaced by a 1x1 convolution
  that widens the patch tokens to 4x the hidden size, a 3x3 depthwise convolution over their 2-D grid, and a
  1x1 convolution back to the hidden size, each followed by BatchNorm (with GELU after the first two). The
  class token bypasses it. Each block thus mixes neighbouring tokens locally next to global self-attention.
- **Layer-wise class-token attention (LCA).** The class token leaving each encoder block is kept. One extra
  attention block, in which the last block's class token attends to the class tokens of all blocks (plus a
  learned per-layer embedding), merges these multi-level representations before the LayerNorm and linear
  head."""

_PREPROCESSING = """\
The image processor saved with the model (`preprocessor_config.json`) applies the evaluation transform of the
official code:

1. resize the shorter side to {{ resize_size }} pixels (`int(256 / 224 * {{ crop_size }})`), bicubic, keeping the
   aspect ratio;
2. center-crop {{ crop_size_text }} pixels;
3. scale to [0, 1] and normalise with the ImageNet mean `(0.485, 0.456, 0.406)` and std `(0.229, 0.224, 0.225)`.

Feed RGB images. The position embeddings are resized (bicubic) when the input size differs from
{{ crop_size_text }}, so other sizes whose side is a multiple of 16 run too, but accuracy was not validated
at those sizes."""

_USAGE = """\
The modelling code ships with the checkpoint, so loading needs `trust_remote_code=True` (read the code in the
repository first, and pin a `revision` for reproducible results).

```python
import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification
from transformers.image_utils import load_image

repo_id = "{{ repo_id }}"
image = load_image("{{ example_image_url }}")

processor = AutoImageProcessor.from_pretrained(repo_id, trust_remote_code=True)
model = AutoModelForImageClassification.from_pretrained(repo_id, trust_remote_code=True)
model.eval()

inputs = processor(images=image, return_tensors="pt")
with torch.no_grad():
    logits = model(**inputs).logits

probabilities = logits.softmax(dim=-1)[0]
top = probabilities.topk(min(5, probabilities.numel()))
for score, index in zip(top.values.tolist(), top.indices.tolist()):
    print(f"{model.config.id2label[index]}: {score:.3f}")
```

Or with the `pipeline` API:

```python
from transformers import pipeline

classifier = pipeline("image-classification", model="{{ repo_id }}", trust_remote_code=True)
print(classifier("{{ example_image_url }}", top_k=5))
```

With this project's Python package installed, `import ceit_hf` registers the CeiT classes with the `Auto*`
classes, and the same calls work without downloading any code."""

_CITATION = """\
```bibtex
@inproceedings{yuan2021ceit,
  title     = {Incorporating Convolution Designs into Visual Transformers},
  author    = {Yuan, Kun and Guo, Shaopeng and Liu, Ziwei and Zhou, Aojun and Yu, Fengwei and Wu, Wei},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2021},
  eprint    = {2103.11816},
  archivePrefix = {arXiv}
}
```"""

_RECIPE_TABLE = """\
| setting | value |
|---|---|
| optimizer | AdamW, lr 5e-4 x batch / 512, weight decay 0.05, eps 1e-8 |
| schedule | cosine, 5 warm-up epochs from lr 1e-6, minimum lr 1e-5 |
| epochs / batch | {{ epochs_text }} / 1024 (4 GPUs x 256), mixed precision |
| regularisation | drop path 0.1, dropout 0, label smoothing 0.1, EMA of weights (decay 0.99996) |
| augmentation | RandAugment `rand-m9-mstd0.5-inc1`, color jitter 0.4, bicubic interpolation, Mixup 0.8, CutMix 1.0, random erasing 0.25 (pixel mode), repeated augmentation |"""


_VARIANT_TEMPLATE = (
    """\
# {{ display_name }}{{ resolution_suffix }} (`{{ name }}`)

`{{ name }}` is {{ variant_phrase }} of **CeiT**, the Convolution-enhanced image Transformer of
Yuan et al., "Incorporating Convolution Designs into Visual Transformers" (ICCV 2021, [arXiv:2103.11816]("""
    + PAPER_URL
    + """)).
It classifies {{ image_size }}x{{ image_size }} RGB images into the 1,000 ImageNet-1k classes. The checkpoint is
packaged for Hugging Face transformers by the `ceit_hf` project; the authors' original implementation is
["""
    + OFFICIAL_CODE_URL.removeprefix("https://")
    + "]("
    + OFFICIAL_CODE_URL
    + """) (Apache-2.0).

## Model details

| | |
|---|---|
| architecture | CeiT ({{ display_name }}): I2T stem + {{ depth }} encoder blocks with LeFF + LCA |
| hidden size / heads / depth | {{ hidden_size }} / {{ num_heads }} / {{ depth }} |
| input size | {{ image_size }}x{{ image_size }} ({{ num_patch_tokens }} patch tokens + 1 class token) |
| parameters | {{ num_parameters }} |
| training data | ImageNet-1k (ILSVRC 2012) training set, 1,000 classes |
| license | Apache-2.0 (the license of the official code and weights) |

"""
    + _ARCHITECTURE
    + """

The weights are meant to be the authors' released ImageNet-1k weights for `{{ name }}`, converted from the
official PyTorch checkpoint to the transformers layout (`model.safetensors`) by the project's conversion code.
The conversion renames and reshapes tensors one to one; nothing is retrained or fine-tuned.

## ImageNet-1k results reported by the authors

{{ results_sentence }}

| model | training epochs | top-1 (%) | top-5 (%) |
|---|---|---|---|
{{ results_rows }}

These are the authors' figures (from the paper and the official repository's README), for the
ImageNet-1k validation set with the evaluation transform below. They were **not measured by this project**:
the converted weights have not been re-evaluated on ImageNet here.

## How to use

"""
    + _USAGE
    + """

## Preprocessing

"""
    + _PREPROCESSING
    + """

## Training procedure

The authors trained CeiT on ImageNet-1k with DeiT's recipe, without a distillation teacher:

"""
    + _RECIPE_TABLE
    + """{{ training_note }}

## Limitations and biases

- The classifier only knows the 1,000 ImageNet-1k categories and inherits that dataset's biases (geographic and
  cultural skew of the photos, noisy or offensive labels in some classes). Do not use it to make decisions about
  people.
- ImageNet's terms of access limit the images to non-commercial research and education; check whether that
  matters for your use of weights trained on them.
- The accuracy above is the authors' claim. Expect lower accuracy on images unlike ImageNet photos (drawings,
  medical or satellite images) and on input sizes other than {{ image_size }}x{{ image_size }}.
- The I2T stem and LeFF use BatchNorm. Fine-tuning with very small per-device batches makes its running
  statistics noisy; keep batches reasonably large, or keep the BatchNorm layers in eval mode.
- Loading from the Hub executes the repository's Python code (`trust_remote_code=True`).

## Citation

"""
    + _CITATION
    + "\n"
)


def _format_int(value: int) -> str:
    return f"{value:,}"


def _format_percent(value: Real) -> str:
    """An accuracy in percent, rounded to 2 decimals: 76.4 -> "76.4", 82 -> "82.0", 97.314 -> "97.31"."""
    return str(round(float(value), 2))


def _epochs_text(variant: Variant) -> str:
    return " or ".join(str(result.epochs) for result in sorted(variant.results, key=lambda r: r.epochs))


def _training_note(variant: Variant) -> str:
    if variant.image_size == 224:
        return ""
    return (
        f"\n\nThis variant takes {variant.image_size}x{variant.image_size} inputs ({variant.num_patch_tokens} patch "
        "tokens). The official training script can fine-tune a 224-pixel checkpoint at a larger input size "
        "(`--finetune` with `--input-size`), but the authors' README gives only the epoch count above, not a "
        "separate schedule for this resolution."
    )


def _variant_values(variant: Variant) -> dict[str, str]:
    headline = variant.headline
    rows = "\n".join(
        f"| `{variant.name}` | {result.epochs} | {_format_percent(result.top1)} | {_format_percent(result.top5)} |"
        for result in sorted(variant.results, key=lambda r: r.epochs)
    )
    if len(variant.results) == 1:
        sentence = (
            f"The authors report **{_format_percent(headline.top1)}% top-1** and "
            f"**{_format_percent(headline.top5)}% top-5** accuracy on ImageNet-1k validation "
            f"after {headline.epochs} training epochs:"
        )
    else:
        sentence = (
            f"The authors report {len(variant.results)} training lengths for this variant. The card's "
            f"`model-index` metadata uses the {headline.epochs}-epoch run, **{_format_percent(headline.top1)}% "
            f"top-1** and **{_format_percent(headline.top5)}% top-5** on ImageNet-1k validation:"
        )
    size = {"ceit_tiny": "Tiny", "ceit_small": "Small", "ceit_base": "Base"}[variant.name.rsplit("_patch", 1)[0]]
    phrase = f"the {size} official variant ({variant.display_name})"
    suffix = ""
    if variant.image_size != 224:
        phrase += f" at {variant.image_size}x{variant.image_size} input resolution"
        suffix = f" at {variant.image_size}"
    return {
        "name": variant.name,
        "display_name": variant.display_name,
        "variant_phrase": phrase,
        "training_note": _training_note(variant),
        "resolution_suffix": suffix,
        "repo_id": variant.repo_id,
        "hidden_size": str(variant.hidden_size),
        "num_heads": str(variant.num_heads),
        "depth": str(variant.depth),
        "image_size": str(variant.image_size),
        "num_patch_tokens": str(variant.num_patch_tokens),
        "num_parameters": f"{_format_int(variant.num_parameters)} ({variant.num_parameters / 1e6:.1f}M)",
        "results_sentence": sentence,
        "results_rows": rows,
        "epochs_text": _epochs_text(variant),
        "example_image_url": EXAMPLE_IMAGE_URL,
        **_preprocessing_values(variant.image_size),
    }


def _eval_results(top1: float, top5: float, *, dataset_id: str, dataset_name: str, split: str, **source) -> list:
    common = {
        "task_type": "image-classification",
        "task_name": "Image Classification",
        "dataset_type": dataset_id,
        "dataset_name": dataset_name,
        "dataset_split": split,
        **source,
    }
    return [
        EvalResult(metric_type=TOP1_METRIC[0], metric_name=TOP1_METRIC[1], metric_value=top1, **common),
        EvalResult(metric_type=TOP5_METRIC[0], metric_name=TOP5_METRIC[1], metric_value=top5, **common),
    ]


def variant_card_data(name: str) -> ModelCardData:
    """The YAML metadata of an official variant's card."""
    variant = _get_variant(name)
    headline = variant.headline
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        license=CARD_LICENSE,
        tags=list(CARD_TAGS),
        datasets=[IMAGENET_DATASET_ID],
        model_name=variant.name,
        eval_results=_eval_results(
            headline.top1,
            headline.top5,
            dataset_id=IMAGENET_DATASET_ID,
            dataset_name="ImageNet-1k",
            split="validation",
            source_name=REPORTED_SOURCE_NAME,
            source_url=PAPER_URL,
        ),
    )


def variant_card(name: str) -> str:
    """The full model card (README.md text) of an official CeiT variant, e.g. "ceit_tiny_patch16_224"."""
    variant = _get_variant(name)
    header = variant_card_data(name).to_yaml(original_order=_HEADER_ORDER)
    body = _substitute(_VARIANT_TEMPLATE, _variant_values(variant))
    text = f"---\n{header}\n---\n\n{body}"
    ModelCard(text)  # parses the header: fails loudly if it is not valid card metadata
    return text


def _get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"Unknown CeiT variant {name!r}; expected one of {sorted(VARIANTS)}.")
    return VARIANTS[name]


# ------------------------------------------------------------------------------------------ fine-tuned template

TEMPLATE_FIELDS: dict[str, str] = {
    "model_name": "name of the fine-tuned model: the card title and the model-index name",
    "repo_id": "Hub repository id the model is published under (used in the usage snippet), e.g. 'me/ceit-cifar10'",
    "base_model": "what the weights started from: a Hub id (e.g. 'ceit-hf/ceit_tiny_patch16_224'), a local path, "
    "or 'random initialisation'",
    "preset": "the CeiT architecture: a key of ceit_hf.PRESETS, or a short description of a custom configuration",
    "dataset": "the fine-tuning dataset, preferably its Hub dataset id (e.g. 'cifar10')",
    "eval_split": "the split the accuracy was measured on, e.g. 'test' or 'validation'",
    "num_labels": "number of classes (positive int)",
    "eval_top1": "top-1 accuracy on eval_split, in percent (0-100)",
    "eval_top5": "top-5 accuracy on eval_split, in percent (0-100; 100 when there are at most 5 classes)",
    "image_size": "input (crop) size in pixels: an int, or a (height, width) pair",
    "hyperparameters": "training hyper-parameters: a mapping name -> value (rendered as a table), or Markdown text",
    "command": "the command line used for training: a string, or a list of arguments",
}

# Computed by `render_template` from `TEMPLATE_FIELDS`; callers do not pass them.
DERIVED_FIELDS = ("crop_size", "crop_size_text", "resize_size", "example_image_url")

_FINETUNED_TEMPLATE = (
    """\
---
library_name: transformers
pipeline_tag: image-classification
license: """
    + CARD_LICENSE
    + """
tags:
"""
    + "".join(f"- {tag}\n" for tag in CARD_TAGS)
    + """\
datasets:
- {{ dataset }}
model-index:
- name: {{ model_name }}
  results:
  - task:
      type: image-classification
      name: Image Classification
    dataset:
      name: {{ dataset }}
      type: {{ dataset }}
      split: {{ eval_split }}
    metrics:
    - type: """
    + TOP1_METRIC[0]
    + """
      value: {{ eval_top1 }}
      name: """
    + TOP1_METRIC[1]
    + """
    - type: """
    + TOP5_METRIC[0]
    + """
      value: {{ eval_top5 }}
      name: """
    + TOP5_METRIC[1]
    + """
---

# {{ model_name }}

`{{ model_name }}` is a CeiT image classifier (Convolution-enhanced image Transformer, Yuan et al., ICCV 2021,
[arXiv:2103.11816]("""
    + PAPER_URL
    + """)) fine-tuned on `{{ dataset }}` to predict {{ num_labels }} classes. It was produced with the
`ceit_hf` project's training script.

| | |
|---|---|
| architecture | CeiT, preset `{{ preset }}` |
| initialised from | `{{ base_model }}` |
| fine-tuning dataset | `{{ dataset }}` |
| number of labels | {{ num_labels }} |
| input size | {{ image_size }} pixels |

## Evaluation

Measured by the training script on the `{{ eval_split }}` split of `{{ dataset }}` at the end of training:

| split | top-1 accuracy (%) | top-5 accuracy (%) |
|---|---|---|
| `{{ eval_split }}` | {{ eval_top1 }} | {{ eval_top5 }} |

## How to use

"""
    + _USAGE
    + """

The label names are in `model.config.id2label`.

## Preprocessing

"""
    + _PREPROCESSING
    + """

## Training procedure

### Hyper-parameters

{{ hyperparameters }}

### Command

```bash
{{ command }}
```

## Model description

"""
    + _ARCHITECTURE
    + """

## Limitations

- The model was evaluated on `{{ dataset }}` only; expect lower accuracy on images unlike that data, and check
  it on your own data before relying on it.
- It inherits the biases of its training data (`{{ dataset }}` and, if it started from pretrained weights,
  their pretraining data such as ImageNet-1k). Do not use it to make decisions about people.
- The I2T stem and LeFF use BatchNorm: further fine-tuning with very small per-device batches makes its running
  statistics noisy.
- Loading from the Hub executes the repository's Python code (`trust_remote_code=True`).

## Citation

"""
    + _CITATION
    + "\n"
)


def template_text() -> str:
    """The raw fine-tuned-model card template, with its `{{ name }}` placeholders."""
    return _FINETUNED_TEMPLATE


_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def template_placeholders(text: str | None = None) -> set[str]:
    """The placeholder names in `text` (default: the fine-tuned template)."""
    return set(_PLACEHOLDER.findall(_FINETUNED_TEMPLATE if text is None else text))


def _substitute(text: str, values: Mapping[str, str]) -> str:
    missing = sorted(template_placeholders(text) - set(values))
    if missing:  # an internal inconsistency, not a caller error
        raise KeyError(f"no value for placeholder(s) {missing}")
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def _preprocessing_values(image_size: int | Sequence[int]) -> dict[str, str]:
    if isinstance(image_size, int):
        height = width = image_size
    else:
        height, width = image_size
    crop = max(height, width)  # the resized image must hold the crop in both directions
    return {
        "crop_size": str(crop),
        "crop_size_text": f"{height}x{width}",
        "resize_size": str(int(256 / 224 * crop)),
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))


def _yaml_scalar(value: Any) -> str:
    """A YAML flow scalar for the header: JSON strings are valid YAML, and quoting makes any text safe."""
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def _markdown_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _hyperparameters_markdown(value: Any) -> str:
    if isinstance(value, Mapping):
        rows = "\n".join(f"| `{_markdown_cell(k)}` | {_markdown_cell(v)} |" for k, v in value.items())
        return "| hyper-parameter | value |\n|---|---|\n" + rows
    return str(value).strip()


def render_template(**fields: Any) -> str:
    """Fill the fine-tuned-model card template.

    Every key of `TEMPLATE_FIELDS` is required. Raises `ValueError` naming the missing, unknown or invalid fields.
    The result is a complete `README.md` (YAML header + Markdown body) for `huggingface_hub`.
    """
    missing = [name for name in TEMPLATE_FIELDS if name not in fields or fields[name] is None]
    unknown = sorted(set(fields) - set(TEMPLATE_FIELDS))
    problems = []
    if missing:
        problems.append(f"missing field(s): {', '.join(missing)}")
    if unknown:
        problems.append(f"unknown field(s): {', '.join(unknown)}")
    if problems:
        raise ValueError(
            "Cannot render the CeiT model card template: "
            + "; ".join(problems)
            + f". Expected exactly these fields: {', '.join(TEMPLATE_FIELDS)}."
        )

    invalid = []
    for name in ("model_name", "repo_id", "base_model", "preset", "dataset", "eval_split"):
        if not isinstance(fields[name], str) or not fields[name].strip():
            invalid.append(f"{name} must be a non-empty string (got {fields[name]!r})")
    if isinstance(fields["repo_id"], str) and not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", fields["repo_id"]):
        invalid.append(f"repo_id must look like 'namespace/name' (got {fields['repo_id']!r})")
    num_labels = fields["num_labels"]
    if not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 1:
        invalid.append(f"num_labels must be a positive int (got {num_labels!r})")
    for name in ("eval_top1", "eval_top5"):
        value = fields[name]
        if not _is_number(value) or not 0 <= value <= 100:
            invalid.append(f"{name} must be an accuracy in percent, between 0 and 100 (got {value!r})")
    image_size = fields["image_size"]
    if isinstance(image_size, Sequence) and not isinstance(image_size, str):
        sizes = list(image_size)
    else:
        sizes = [image_size]
    if len(sizes) not in (1, 2) or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        invalid.append(f"image_size must be a positive int or a (height, width) pair (got {image_size!r})")
    hyperparameters = fields["hyperparameters"]
    if isinstance(hyperparameters, Mapping):
        if not hyperparameters:
            invalid.append("hyperparameters must not be empty")
    elif not isinstance(hyperparameters, str) or not hyperparameters.strip():
        invalid.append("hyperparameters must be a mapping or non-empty Markdown text")
    command = fields["command"]
    if isinstance(command, (list, tuple)):
        command = shlex.join(str(part) for part in command)
    if not isinstance(command, str) or not command.strip():
        invalid.append("command must be a non-empty string or list of arguments")
    elif "```" in command:
        invalid.append("command must not contain ``` (it is rendered inside a code block)")
    if invalid:
        raise ValueError("Cannot render the CeiT model card template: invalid field(s): " + "; ".join(invalid) + ".")

    values: dict[str, Any] = {name: fields[name] for name in TEMPLATE_FIELDS}
    values["model_name"] = values["model_name"].strip()
    values["eval_top1"] = _format_percent(values["eval_top1"])
    values["eval_top5"] = _format_percent(values["eval_top5"])
    values["num_labels"] = str(num_labels)
    values["hyperparameters"] = _hyperparameters_markdown(hyperparameters)
    values["command"] = command.strip()
    values.update(_preprocessing_values(sizes[0] if len(sizes) == 1 else (sizes[0], sizes[1])))
    values["image_size"] = values["crop_size_text"]
    values["example_image_url"] = EXAMPLE_IMAGE_URL

    # The header and the body need different escaping of the same value: in the header, text is quoted and the
    # accuracies stay numbers.
    _, header, body = _FINETUNED_TEMPLATE.split("---\n", 2)
    numbers = {"eval_top1", "eval_top5", "num_labels"}
    header_values = {name: value if name in numbers else _yaml_scalar(value) for name, value in values.items()}
    text = "---\n" + _substitute(header, header_values) + "---\n" + _substitute(body, values)
    ModelCard(text)  # the header must parse as card metadata
    return text


# ---------------------------------------------------------------------------------------------- generation


def generated_cards() -> dict[str, str]:
    """File name -> content of everything in the repository's `model_cards/` folder."""
    cards = {f"{name}.md": variant_card(name) for name in VARIANTS}
    cards["template.md"] = template_text()
    return cards


__all__ = [
    "DERIVED_FIELDS",
    "TEMPLATE_FIELDS",
    "VARIANTS",
    "ReportedResult",
    "Variant",
    "generated_cards",
    "render_template",
    "template_placeholders",
    "template_text",
    "variant_card",
    "variant_card_data",
]
