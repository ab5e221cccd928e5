# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Training CeiT through transformers' `Trainer`: data loading, the DeiT/CeiT recipe, model EMA, and the
defaults of the project's main job (`scripts/train.py`).

The command line follows transformers' `examples/pytorch/image-classification/run_image_classification.py`
(every `TrainingArguments` flag plus the data/model flags of that script), with `--preset`/`--config_overrides`
to train from scratch and the recipe flags below. Flags given on the command line always win; the defaults
this module fills in are only for flags left out.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import os
import re
import shlex
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchvision.transforms import v2

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)

from .configuration_ceit import PRESETS, CeiTConfig
from .image_processing_ceit import CeiTImageProcessor
from .metrics import TopKAccuracy
from .modeling_ceit import CeiTForImageClassification, convert_sync_batchnorm


logger = logging.getLogger("ceit_hf.training")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A pretrained model to fine-tune: a Hub id or a local folder."}
    )
    preset: str | None = field(
        default=None, metadata={"help": f"Train this official architecture from scratch: one of {sorted(PRESETS)}."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Config options for training from scratch, 'k=v,k=v' (e.g. 'num_encoder_blocks=6,dropout=0.1')."},
    )
    image_size: int | None = field(
        default=None, metadata={"help": "Training/eval crop size when training from scratch (default: from the data)."}
    )
    image_processor_name: str | None = field(default=None, metadata={"help": "Image processor to use instead of the model's."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache downloaded models and datasets."})
    model_revision: str = field(default="main", metadata={"help": "Model revision (branch, tag or commit)."})
    token: str | None = field(default=None, metadata={"help": "Hub token (default: the logged-in one)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow remote code of datasets/models."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Re-initialise the classifier when the number of labels differs."}
    )


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "A dataset on the Hub (or a local dataset script)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration."})
    train_dir: str | None = field(default=None, metadata={"help": "Training images, one sub-folder per class."})
    validation_dir: str | None = field(default=None, metadata={"help": "Validation images, one sub-folder per class."})
    train_val_split: float = field(
        default=0.15, metadata={"help": "Held-out fraction of the training data when there is no validation split."}
    )
    image_column_name: str = field(default="image", metadata={"help": "The dataset column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "The dataset column holding the labels."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep this many training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep this many evaluation examples."})


@dataclass
class RecipeArguments:
    recipe: str = field(
        default="none",
        metadata={"help": "'deit': the official CeiT/DeiT ImageNet recipe for every recipe flag left out; 'none'."},
    )
    rand_augment_ops: int = field(default=0, metadata={"help": "RandAugment operations per image (0: off)."})
    rand_augment_magnitude: int = field(default=9, metadata={"help": "RandAugment magnitude (of 30 levels)."})
    color_jitter: float = field(default=0.0, metadata={"help": "ColorJitter strength for brightness/contrast/saturation."})
    hflip: float | None = field(default=None, metadata={"help": "Horizontal flip probability (default 0.5; 0 for digits)."})
    crop_min_scale: float = field(
        default=0.08, metadata={"help": "RandomResizedCrop's smallest crop, as a fraction of the image area."}
    )
    random_erasing: float = field(default=0.0, metadata={"help": "RandomErasing probability (per image)."})
    mixup_alpha: float = field(default=0.0, metadata={"help": "Mixup alpha (0: off)."})
    cutmix_alpha: float = field(default=0.0, metadata={"help": "CutMix alpha (0: off). With Mixup, each batch picks one."})
    drop_path: float | None = field(default=None, metadata={"help": "Stochastic depth: largest drop-path rate."})
    model_ema_decay: float | None = field(default=None, metadata={"help": "Keep an EMA of the weights with this decay."})
    sync_batchnorm: bool = field(
        default=False, metadata={"help": "Convert BatchNorm to SyncBatchNorm (multi-GPU runs with small per-GPU batches)."}
    )


# The official recipe (DeiT's, used for CeiT; shared/reference/ceit_architecture.md). The learning rate scales
# with the global batch: 5e-4 * batch / 512, filled in once the world size is known.
DEIT_RECIPE = {
    "rand_augment_ops": 2,
    "rand_augment_magnitude": 9,
    "color_jitter": 0.4,
    "random_erasing": 0.25,
    "mixup_alpha": 0.8,
    "cutmix_alpha": 1.0,
    "drop_path": 0.1,
    "model_ema_decay": 0.99996,
    "label_smoothing_factor": 0.1,
    "weight_decay": 0.05,
    "adam_epsilon": 1e-8,
    "lr_scheduler_type": "cosine_with_min_lr",
    "lr_scheduler_kwargs": '{"min_lr": 1e-5}',
    "num_train_epochs": 300,
    "warmup_steps": 5 / 300,
    "per_device_train_batch_size": 256,
}
DEIT_BASE_LR = 5e-4

# Flags every run gets unless given: the image column is transformed on the fly (so it must not be dropped) and
# the model is evaluated and saved once per epoch.
RUN_DEFAULTS = {
    "remove_unused_columns": False,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "logging_steps": 10,
}

# Training from scratch with the small default model (the main job, or own images without model flags).
SMALL_MODEL_DEFAULTS = {
    "learning_rate": 1e-3,
    "weight_decay": 0.05,
    "warmup_steps": 0.1,
    "lr_scheduler_type": "cosine",
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 128,
    "num_train_epochs": 10,
}
DIGITS_DEFAULTS = {**SMALL_MODEL_DEFAULTS, "num_train_epochs": 20, "hflip": 0.0, "crop_min_scale": 0.5}
DIGITS_IMAGE_SIZE = 32


def _flags_given(argv: list[str]) -> set[str]:
    return {arg[2:].split("=", 1)[0].replace("-", "_") for arg in argv if arg.startswith("--")}


def _with_defaults(argv: list[str], defaults: dict) -> list[str]:
    """`argv` plus `--flag value` for each default whose flag `argv` does not give."""
    given = _flags_given(argv)
    extra = []
    for name, value in defaults.items():
        if name not in given:
            extra += [f"--{name}", json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    return list(argv) + extra


def parse_args(argv: list[str] | None = None):
    """Parses the command line into (model, data, recipe, training) arguments, filling the defaults of the kind
    of run it describes (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    given = _flags_given(argv)
    if "output_dir" not in given:
        raise SystemExit("error: --output_dir is required (the folder the trained model is written to).")
    defaults = dict(RUN_DEFAULTS)
    if not torch.cuda.is_available():
        defaults["dataloader_pin_memory"] = False  # pinning needs an accelerator
    from_scratch = "model_name_or_path" not in given and "preset" not in given and "config_overrides" not in given
    bundled = "dataset_name" not in given and "train_dir" not in given
    if bundled:
        defaults.update(DIGITS_DEFAULTS)
    elif from_scratch:
        defaults.update(SMALL_MODEL_DEFAULTS)
    recipe = _recipe_name(argv)
    if recipe == "deit":
        defaults.update(DEIT_RECIPE)
    parser = HfArgumentParser((ModelArguments, DataArguments, RecipeArguments, TrainingArguments))
    model_args, data_args, recipe_args, training_args = parser.parse_args_into_dataclasses(
        args=_with_defaults(argv, defaults)
    )
    if recipe_args.recipe not in ("none", "deit"):
        raise SystemExit(f"error: --recipe must be 'deit' or 'none', got {recipe_args.recipe!r}.")
    if recipe == "deit" and "learning_rate" not in given:
        global_batch = training_args.per_device_train_batch_size * training_args.world_size
        global_batch *= training_args.gradient_accumulation_steps
        training_args.learning_rate = DEIT_BASE_LR * global_batch / 512
    if model_args.preset is not None and model_args.preset not in PRESETS:
        raise SystemExit(f"error: unknown --preset {model_args.preset!r}; expected one of {sorted(PRESETS)}.")
    if model_args.model_name_or_path and (model_args.preset or model_args.config_overrides):
        raise SystemExit("error: --model_name_or_path fine-tunes a model; --preset/--config_overrides build a new one.")
    if training_args.push_to_hub and not training_args.hub_model_id:
        raise SystemExit("error: --push_to_hub needs --hub_model_id NAMESPACE/NAME.")
    if recipe_args.hflip is None:
        recipe_args.hflip = 0.5
    training_args.resume_from_checkpoint = resolve_resume_checkpoint(
        training_args.resume_from_checkpoint, training_args.output_dir, ema=bool(recipe_args.model_ema_decay)
    )
    return model_args, data_args, recipe_args, training_args


def _recipe_name(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--recipe" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--recipe="):
            return arg.split("=", 1)[1]
    return "none"


# ------------------------------------------------------------------------------------------------------ data


def digits_dataset(seed: int = 0):
    """scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, 10 classes) as a `DatasetDict` with a
    stratified 80/20 train/validation split: the offline default data of the main job."""
    import datasets
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [Image.fromarray((img * 255 / 16).round().astype(np.uint8), mode="L") for img in digits.images]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(10)])}
    )
    full = datasets.Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features)
    split = full.train_test_split(test_size=0.2, stratify_by_column="label", seed=seed)
    return datasets.DatasetDict(train=split["train"], validation=split["test"])


def load_image_datasets(data_args: DataArguments, model_args: ModelArguments, seed: int):
    """The train and validation splits, from the Hub, image folders, or the bundled digits."""
    import datasets

    if data_args.dataset_name is not None:
        raw = datasets.load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            cache_dir=model_args.cache_dir,
            token=model_args.token,
            trust_remote_code=model_args.trust_remote_code,
        )
    elif data_args.train_dir is not None:
        for name in ("train_dir", "validation_dir"):
            folder = getattr(data_args, name)
            if folder is not None and not Path(folder).is_dir():
                raise ValueError(f"--{name} {folder!r} is not a folder.")
        data_files = {"train": os.path.join(data_args.train_dir, "**")}
        if data_args.validation_dir is not None:
            data_files["validation"] = os.path.join(data_args.validation_dir, "**")
        raw = datasets.load_dataset("imagefolder", data_files=data_files, cache_dir=model_args.cache_dir)
    else:
        raw = digits_dataset(seed=0)

    if "train" not in raw:
        raise ValueError(f"The dataset has no 'train' split (splits: {list(raw)}).")
    for column in (data_args.image_column_name, data_args.label_column_name):
        if column not in raw["train"].column_names:
            raise ValueError(
                f"Column {column!r} is not in the dataset (columns: {raw['train'].column_names}); pass "
                "--image_column_name / --label_column_name."
            )
    if "validation" not in raw:
        validation = next((s for s in ("val", "valid", "test") if s in raw), None)
        if validation is not None:
            raw["validation"] = raw.pop(validation)
        else:
            split = raw["train"].train_test_split(
                test_size=data_args.train_val_split,
                seed=seed,
                stratify_by_column=data_args.label_column_name
                if isinstance(raw["train"].features[data_args.label_column_name], datasets.ClassLabel)
                else None,
            )
            raw["train"], raw["validation"] = split["train"], split["test"]
    if data_args.max_train_samples is not None:
        raw["train"] = raw["train"].shuffle(seed=seed).select(range(min(data_args.max_train_samples, len(raw["train"]))))
    if data_args.max_eval_samples is not None:
        raw["validation"] = raw["validation"].select(range(min(data_args.max_eval_samples, len(raw["validation"]))))
    return raw


def label_names(dataset, label_column: str) -> list[str]:
    """Class names from a `ClassLabel` column, else the sorted distinct label values."""
    import datasets

    feature = dataset.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    values = sorted(set(dataset[label_column]))
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values) or values != list(range(len(values))):
        raise ValueError(
            f"Labels of column {label_column!r} must be a ClassLabel or the integers 0..K-1; got {values[:10]}."
        )
    return [str(v) for v in values]


def check_labels(dataset, label_column: str, num_labels: int, split: str):
    """Refuses labels outside `[0, num_labels)`, which would otherwise crash mid-run or train silently wrong."""
    labels = np.asarray(dataset[label_column])
    if labels.size and (labels.min() < 0 or labels.max() >= num_labels):
        bad = sorted({int(v) for v in labels if v < 0 or v >= num_labels})[:10]
        raise ValueError(
            f"The {split} split has labels {bad} outside the model's {num_labels} classes (id2label 0..{num_labels - 1})."
        )


def infer_image_size(dataset, image_column: str, samples: int = 64) -> int:
    """A crop size for training from scratch: the median shorter side of some images, rounded to a multiple of
    16 (what the default stem and patch size need) between 32 and 224."""
    sides = [min(dataset[i][image_column].size) for i in range(min(samples, len(dataset)))]
    side = int(np.median(sides)) if sides else 224
    return int(min(224, max(32, round(side / 16) * 16)))


# ---------------------------------------------------------------------------------------------------- model


def small_config(image_size: int, id2label: dict[int, str], **overrides) -> CeiTConfig:
    """The small CeiT the main job trains from scratch: the official architecture at width 64 with 4 blocks and
    a 4x4 (images <= 64 px) or wider token grid."""
    settings = dict(
        image_size=image_size,
        d_model=64,
        encoder_num_heads=2,
        lca_encoder_num_heads=2,
        num_encoder_blocks=4,
        i2t_out_channels=32,
        patch_size=2 if image_size <= 64 else 4,
        id2label=id2label,
    )
    return CeiTConfig.from_preset("ceit_tiny_patch16_224", **{**settings, **overrides})


def parse_config_overrides(text: str | None) -> dict:
    """'k=v,k=v' -> {k: python value}; values are Python literals where they parse (1e-3, True, None, 'pre')."""
    overrides = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        if "=" not in item:
            raise ValueError(f"--config_overrides item {item!r} is not of the form key=value.")
        key, value = (s.strip() for s in item.split("=", 1))
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return overrides


def build_model(model_args: ModelArguments, recipe_args: RecipeArguments, labels: list[str], image_size: int | None):
    id2label = dict(enumerate(labels))
    label2id = {name: i for i, name in id2label.items()}
    overrides = parse_config_overrides(model_args.config_overrides)
    if recipe_args.drop_path:
        overrides.update(stochastic_depth=True, stochastic_depth_mp=recipe_args.drop_path)
    if model_args.model_name_or_path:
        config = AutoConfig.from_pretrained(
            model_args.model_name_or_path,
            num_labels=len(labels),
            id2label=id2label,
            label2id=label2id,
            cache_dir=model_args.cache_dir,
            revision=model_args.model_revision,
            token=model_args.token,
            trust_remote_code=model_args.trust_remote_code,
            **overrides,
        )
        return AutoModelForImageClassification.from_pretrained(
            model_args.model_name_or_path,
            config=config,
            cache_dir=model_args.cache_dir,
            revision=model_args.model_revision,
            token=model_args.token,
            trust_remote_code=model_args.trust_remote_code,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        )
    if model_args.preset:
        if image_size is not None and model_args.image_size is not None:
            overrides.setdefault("image_size", image_size)
        config = CeiTConfig.from_preset(model_args.preset, id2label=id2label, **overrides)
    else:
        config = small_config(image_size, id2label, **overrides)
    return CeiTForImageClassification(config)


def image_processor_for(model_args: ModelArguments, model) -> CeiTImageProcessor:
    """The model's own image processor when it has one, else the CeiT evaluation transform at its size."""
    source = model_args.image_processor_name or model_args.model_name_or_path
    if source:
        try:
            return AutoImageProcessor.from_pretrained(
                source, cache_dir=model_args.cache_dir, token=model_args.token,
                trust_remote_code=model_args.trust_remote_code,
            )
        except (OSError, ValueError) as error:
            logger.warning("No image processor in %s (%s); using the CeiT default.", source, error)
    height, width = model.config.image_hw
    return CeiTImageProcessor(crop_size={"height": height, "width": width})


# ----------------------------------------------------------------------------------------------- transforms


def _processor_geometry(processor) -> tuple[tuple[int, int], list[float], list[float]]:
    crop = processor.crop_size
    return (crop["height"], crop["width"]), list(processor.image_mean), list(processor.image_std)


def train_transform(processor, recipe: RecipeArguments) -> v2.Compose:
    """Training augmentation from torchvision's transforms v2, normalised with the processor's statistics."""
    size, mean, std = _processor_geometry(processor)
    steps = [v2.RGB(), v2.RandomResizedCrop(
            size, scale=(recipe.crop_min_scale, 1.0), interpolation=v2.InterpolationMode.BICUBIC, antialias=True
        )]
    if recipe.hflip:
        steps.append(v2.RandomHorizontalFlip(recipe.hflip))
    if recipe.rand_augment_ops:
        steps.append(
            v2.RandAugment(
                num_ops=recipe.rand_augment_ops,
                magnitude=recipe.rand_augment_magnitude,
                interpolation=v2.InterpolationMode.BICUBIC,
            )
        )
    if recipe.color_jitter:
        strength = recipe.color_jitter
        steps.append(v2.ColorJitter(brightness=strength, contrast=strength, saturation=strength))
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if recipe.random_erasing:
        steps.append(v2.RandomErasing(p=recipe.random_erasing, value="random"))
    return v2.Compose(steps)


INDEX_COLUMN = "__example_index__"


def with_transform(dataset, image_column: str, label_column: str, transform):
    """`dataset` yielding `pixel_values` and `labels`, transformed on the fly. `transform` receives the batch's
    images and their row indices."""
    dataset = dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))

    def apply(batch):
        return {
            "pixel_values": transform(batch[image_column], batch[INDEX_COLUMN]),
            "labels": batch[label_column],
        }

    dataset.set_transform(apply)
    return dataset


class SeededAugmentation:
    """Applies a random `transform` to each example with torch's CPU generator seeded from (seed, epoch, example
    index), then restores the generator. An example's augmentation is then a function of those three numbers
    alone, not of what was drawn before it, so a run resumed from a checkpoint, a data loader that prefetches
    batches, and any number of workers all produce the same augmented images. `EpochCallback` sets `epoch`.
    """

    def __init__(self, transform, seed: int):
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def __call__(self, images, indices):
        out = []
        for image, index in zip(images, indices):
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(hash((self.seed, self.epoch, int(index))) & 0x7FFF_FFFF_FFFF_FFFF)
                out.append(self.transform(image))
        return out


class EpochCallback(TrainerCallback):
    """Tells a `SeededAugmentation` which epoch the training loop is in (also when resuming mid-epoch)."""

    def __init__(self, augmentation: SeededAugmentation):
        self.augmentation = augmentation

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.augmentation.epoch = math.floor(state.epoch or 0)


def eval_transform(processor):
    def apply(images, indices=None):
        return list(processor([image.convert("RGB") for image in images], return_tensors="pt")["pixel_values"])

    return apply


def batch_mixer(num_labels: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0):
    """torchvision's Mixup and/or CutMix on a training batch (one of them per batch when both are on), or None."""
    mixers = []
    if mixup_alpha > 0:
        mixers.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_labels))
    if cutmix_alpha > 0:
        mixers.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_labels))
    if not mixers:
        return None
    return v2.RandomChoice(mixers) if len(mixers) > 1 else mixers[0]


class CeiTTrainer(Trainer):
    """`Trainer` that mixes training batches (Mixup/CutMix) right before the step, so evaluation and prediction
    batches keep their labels. The mixing draws from torch's global RNG, which Trainer checkpoints and restores."""

    def __init__(self, *args, batch_mix=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_mix = batch_mix

    def training_step(self, model, inputs, *args, **kwargs):
        if self.batch_mix is not None and len(inputs["labels"]) > 1:
            inputs = dict(inputs)
            inputs["pixel_values"], inputs["labels"] = self.batch_mix(inputs["pixel_values"], inputs["labels"])
        return super().training_step(model, inputs, *args, **kwargs)


def soft_target_loss(smoothing: float):
    """Cross-entropy for Trainer's `compute_loss_func`: soft (mixed) targets or class indices, with label
    smoothing applied to both."""

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        if labels.is_floating_point():
            targets = labels * (1.0 - smoothing) + smoothing / logits.shape[-1]
            return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        return F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)

    return loss


# ---------------------------------------------------------------------------------------------------- EMA


class ModelEMACallback(TrainerCallback):
    """An exponential moving average of the weights (BatchNorm statistics included), updated after every
    optimizer step, written to each checkpoint (`ema.safetensors`) and restored on resume."""

    FILE = "ema.safetensors"

    def __init__(self, decay: float, resume_from: str | None = None):
        self.decay = decay
        self.resume_from = resume_from
        self.ema: AveragedModel | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True)
        if self.resume_from and (Path(self.resume_from) / self.FILE).is_file():
            from safetensors.torch import load_file

            self.ema.load_state_dict(load_file(Path(self.resume_from) / self.FILE))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.ema.update_parameters(model)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from safetensors.torch import save_file

            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            tensors = {k: v.detach().cpu().contiguous() for k, v in self.ema.state_dict().items()}
            save_file(tensors, folder / self.FILE)

    @property
    def model(self):
        return self.ema.module


# ---------------------------------------------------------------------------------------------------- run


CHECKPOINT_FOLDER = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_problems(folder: str | os.PathLike, ema: bool = False) -> list[str]:
    """What keeps `folder` from being a complete Trainer checkpoint (nothing when it is one).

    Trainer (transformers 5.24) does not save checkpoints atomically: it writes the files one after another into the
    final `checkpoint-N` folder, the weights first and `trainer_state.json` last (then the EMA, `ema.safetensors`). A
    run killed while saving leaves a folder without its trainer state (or EMA), or with truncated weights.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return ["no such folder"]
    problems = []
    try:
        json.loads((folder / "trainer_state.json").read_text())["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        problems.append("trainer_state.json (written last) is missing or incomplete")
    weights = folder / "model.safetensors"
    if weights.is_file():
        from safetensors import safe_open

        try:
            with safe_open(weights, framework="pt"):
                pass
        except Exception as error:  # safetensors' own error type: a truncated or damaged file
            problems.append(f"model.safetensors is damaged or truncated ({error})")
    elif not any((folder / name).is_file() for name in ("model.safetensors.index.json", "pytorch_model.bin")):
        problems.append("the model weights are missing")
    if ema and not (folder / ModelEMACallback.FILE).is_file():
        problems.append(f"{ModelEMACallback.FILE} (the EMA of the weights, written after the trainer state) is missing")
    return problems


def resolve_resume_checkpoint(value: str | None, output_dir: str, ema: bool = False) -> str | None:
    """The checkpoint `--resume_from_checkpoint` names, checked to be complete (see `checkpoint_problems`).

    `auto` picks the newest complete `checkpoint-N` folder of `output_dir`, skipping incomplete ones (a run killed while
    saving), and starts from scratch when there is none; `latest` does the same but fails when there is none. A path
    to an incomplete checkpoint fails with what it lacks.
    """
    if value is None:
        return None
    if value in ("auto", "latest"):
        names = os.listdir(output_dir) if os.path.isdir(output_dir) else []
        found = sorted(((int(m.group(1)), name) for name in names if (m := CHECKPOINT_FOLDER.match(name))), reverse=True)
        for _, name in found:
            path = Path(output_dir) / name
            problems = checkpoint_problems(path, ema)
            if not problems:
                logger.info("Resuming from %s, the newest complete checkpoint in %s", path, output_dir)
                return str(path)
            logger.warning("Skipping the incomplete checkpoint %s: %s.", path, "; ".join(problems))
        if value == "latest":
            raise SystemExit(f"error: --resume_from_checkpoint latest: no complete checkpoint in {output_dir!r}.")
        return None
    problems = checkpoint_problems(value, ema)
    if problems:
        raise SystemExit(
            f"error: --resume_from_checkpoint {value!r} is not a complete checkpoint: {'; '.join(problems)}. "
            "`--resume_from_checkpoint auto` resumes from the newest complete checkpoint in --output_dir."
        )
    return value


def check_output_dir(output_dir: str):
    """Fails before any training when the output folder cannot be written."""
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-") as probe:
            probe.write(b"0" * 1024 * 1024)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        raise SystemExit(f"error: cannot write to --output_dir {output_dir!r}: {error.strerror or error}.") from None


def setup_logging(args: TrainingArguments):
    """INFO logs from this module on every process (rank-tagged by the setup line), transformers' own logs at the
    level Trainer chooses for this process."""
    import transformers

    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO)
    transformers.utils.logging.set_verbosity(args.get_process_log_level())


def describe_setup(args: TrainingArguments) -> str:
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    return (
        f"Distributed setup: world size {args.world_size}, process rank {args.process_index}, "
        f"device {args.device}, parallel mode {args.parallel_mode.value}, precision {precision}, "
        f"per-device batch {args.per_device_train_batch_size}, gradient accumulation {args.gradient_accumulation_steps}"
    )


def compute_metrics_fn(num_labels: int):
    metric = TopKAccuracy(top_k=(5,) if num_labels >= 5 else ())

    def compute(eval_pred):
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        return metric.compute(predictions=logits, references=eval_pred.label_ids)

    return compute


def write_model_card(output_dir, model, model_args, data_args, training_args, metrics, argv):
    from .conversion import preset_name
    from .model_card import render_template

    dataset = data_args.dataset_name or data_args.train_dir or "sklearn-digits"
    top5 = metrics.get("eval_top5_accuracy", metrics.get("eval_accuracy", 0.0))
    hyperparameters = {
        "learning_rate": training_args.learning_rate,
        "epochs": training_args.num_train_epochs,
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        "world_size": training_args.world_size,
        "weight_decay": training_args.weight_decay,
        "lr_scheduler": str(training_args.lr_scheduler_type.value if hasattr(training_args.lr_scheduler_type, "value") else training_args.lr_scheduler_type),
        "seed": training_args.seed,
    }
    card = render_template(
        model_name=Path(output_dir).resolve().name,
        repo_id=training_args.hub_model_id or f"your-name/{Path(output_dir).resolve().name}",
        base_model=model_args.model_name_or_path or "random initialisation",
        preset=preset_name(model.config) or (model_args.preset and f"{model_args.preset} (modified)") or "small CeiT (ceit_hf.training.small_config)",
        dataset=str(dataset),
        eval_split="validation",
        num_labels=model.config.num_labels,
        eval_top1=100 * metrics.get("eval_accuracy", 0.0),
        eval_top5=100 * top5,
        image_size=list(model.config.image_hw),
        hyperparameters=hyperparameters,
        command=shlex.join(["python", "scripts/train.py", *argv]),
    )
    (Path(output_dir) / "README.md").write_text(card)


def push_output(training_args: TrainingArguments):
    """Uploads the trained model (not the checkpoints or pickles) to `--hub_model_id`."""
    from .hub import export_model_folder, push_model_folder

    with tempfile.TemporaryDirectory() as folder:
        export_model_folder(training_args.output_dir, folder)
        push_model_folder(
            folder,
            training_args.hub_model_id,
            private=bool(training_args.hub_private_repo),
            token=training_args.hub_token,
            revision=training_args.hub_revision,
        )


def main(argv: list[str] | None = None) -> dict:
    """The training job: parse, load data, build the model, train with Trainer, evaluate, save, card, push."""
    argv = list(sys.argv[1:] if argv is None else argv)
    model_args, data_args, recipe_args, training_args = parse_args(argv)
    setup_logging(training_args)
    if training_args.process_index == 0:
        check_output_dir(training_args.output_dir)
    logger.info(describe_setup(training_args))

    from transformers import set_seed

    set_seed(training_args.seed)
    raw = load_image_datasets(data_args, model_args, training_args.seed)
    labels = label_names(raw["train"], data_args.label_column_name)
    image_size = model_args.image_size
    if image_size is None and not model_args.model_name_or_path and not model_args.preset:
        bundled = data_args.dataset_name is None and data_args.train_dir is None
        image_size = DIGITS_IMAGE_SIZE if bundled else infer_image_size(raw["train"], data_args.image_column_name)
    model = build_model(model_args, recipe_args, labels, image_size)
    processor = image_processor_for(model_args, model)
    # Trainer would push every checkpoint folder (with its pickled optimizer state); the model is pushed at the end.
    push_requested, training_args.push_to_hub = training_args.push_to_hub, False
    trainer, metrics = train_and_evaluate(model, raw, processor, labels, data_args, recipe_args, training_args)
    if trainer.is_world_process_zero():
        write_model_card(training_args.output_dir, trainer.model, model_args, data_args, training_args, metrics, argv)
        if push_requested:
            push_output(training_args)
    return metrics


def train_and_evaluate(
    model,
    raw,
    processor,
    labels: list[str],
    data_args: DataArguments,
    recipe_args: RecipeArguments,
    training_args: TrainingArguments,
) -> tuple[CeiTTrainer, dict]:
    """The job once the model is built: checks the labels, applies the recipe's transforms (seeded training
    augmentation, `processor`'s evaluation transform) to the `train`/`validation` splits of `raw`, trains `model`
    with `CeiTTrainer` (Mixup/CutMix, soft-target loss, EMA as `recipe_args` says), saves it to
    `training_args.output_dir`, evaluates it (and its EMA), and writes the metrics. Any image-classification model
    of transformers works (`main` passes a CeiT, `ceit_hf.comparison` also a DeiT). Returns the trainer (its
    `state.log_history` holds the per-epoch evaluations) and the final evaluation metrics.

    `training_args.push_to_hub` is left to the caller: with it on, Trainer pushes every checkpoint."""
    for split in ("train", "validation"):
        check_labels(raw[split], data_args.label_column_name, model.config.num_labels, split)
    if recipe_args.sync_batchnorm:
        if not torch.cuda.is_available():
            raise SystemExit("error: --sync_batchnorm needs CUDA devices (SyncBatchNorm has no CPU implementation).")
        model = convert_sync_batchnorm(model)
    params = sum(p.numel() for p in model.parameters())
    image_hw = getattr(model.config, "image_hw", None) or (processor.crop_size["height"], processor.crop_size["width"])
    logger.info(
        "Model: %s, %s parameters, image size %s, %d classes; %d training / %d validation images",
        type(model).__name__, f"{params:,}", image_hw, len(labels), len(raw["train"]), len(raw["validation"]),
    )

    augmentation = SeededAugmentation(train_transform(processor, recipe_args), seed=training_args.seed)
    train_set = with_transform(raw["train"], data_args.image_column_name, data_args.label_column_name, augmentation)
    eval_set = with_transform(
        raw["validation"], data_args.image_column_name, data_args.label_column_name, eval_transform(processor)
    )
    callbacks = [EpochCallback(augmentation)]
    ema = None
    if recipe_args.model_ema_decay:
        ema = ModelEMACallback(recipe_args.model_ema_decay, resume_from=training_args.resume_from_checkpoint)
        callbacks.append(ema)
    smoothing = training_args.label_smoothing_factor
    mixing = recipe_args.mixup_alpha > 0 or recipe_args.cutmix_alpha > 0
    trainer = CeiTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=processor,
        data_collator=default_data_collator,
        compute_metrics=compute_metrics_fn(len(labels)),
        compute_loss_func=soft_target_loss(smoothing) if (mixing or smoothing) else None,
        callbacks=callbacks,
        batch_mix=batch_mixer(len(labels), recipe_args.mixup_alpha, recipe_args.cutmix_alpha),
    )

    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    metrics = trainer.evaluate()
    if ema is not None:
        ema_metrics = CeiTTrainer(
            model=ema.model, args=training_args, eval_dataset=eval_set, data_collator=default_data_collator,
            compute_metrics=compute_metrics_fn(len(labels)),
        ).evaluate(metric_key_prefix="eval_ema")
        metrics.update(ema_metrics)
        if trainer.is_world_process_zero():
            ema.model.save_pretrained(Path(training_args.output_dir) / "ema")
            processor.save_pretrained(Path(training_args.output_dir) / "ema")
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    return trainer, metrics
