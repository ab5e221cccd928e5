# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""The command line of `scripts/train.py`: `TrainingArguments`, the flags of transformers' image classification
example, `--preset`/`--config_overrides` and the DeiT recipe's; the job's defaults depend on the kind of run."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, TrainingArguments
from transformers.trainer_utils import sort_checkpoints
from transformers.utils import strtobool

from ..configuration_ceit import PRESETS
from ..data.loader import default_num_workers
from ..data.streams import STREAM_STATE_FILE
from ..data.transforms import rand_augment
from ..distributed import check_fsdp_settings
from ..hub import safetensors_problem


logger = logging.getLogger("ceit_hf.training")


def arg(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class ModelArguments:
    model_name_or_path: str | None = arg(None, "A pretrained model to fine-tune: a Hub id or a local folder.")
    preset: str | None = arg(None, f"Train this official architecture from scratch: one of {sorted(PRESETS)}.")
    config_overrides: str | None = arg(None, "A new model's config options: 'k=v,k=v' (e.g. 'num_encoder_blocks=6').")
    image_size: int | None = arg(None, "Training/eval crop size when training from scratch (default: from the data).")
    image_processor_name: str | None = arg(None, "Image processor to use instead of the model's.")
    cache_dir: str | None = arg(None, "Where to cache downloaded models and datasets.")
    model_revision: str = arg("main", "Model revision (branch, tag or commit).")
    token: str | None = arg(None, "Hub token (default: the logged-in one).")
    trust_remote_code: bool = arg(False, "Allow remote code of datasets/models.")
    ignore_mismatched_sizes: bool = arg(False, "Re-initialise the classifier when the number of labels differs.")
    lora_rank: int | None = arg(None, "Fine-tune with LoRA adapters of this rank (needs peft); saves the adapter.")
    lora_alpha: float | None = arg(None, "LoRA scaling alpha (default: 2 x rank).")
    lora_dropout: float = arg(0.0, "Dropout on the LoRA adapters' input.")
    lora_target_modules: str = arg("qkv,proj,expand,pointwise,reduce", "Module names that get LoRA adapters.")
    leff_recompute: str = arg("auto", "Recompute LeFF's activations in backward: 'on', 'off', 'auto' (on for CPU).")
    stem_recompute: str = arg("auto", "Recompute the I2T stem in backward: 'on', 'off', 'auto' (on for CPU).")
    merge_lora: bool = arg(False, "Also write the adapters merged into the model to OUTPUT_DIR/merged.")


@dataclass
class DataArguments:
    dataset_name: str | None = arg(None, "A dataset on the Hub (or a local dataset folder).")
    dataset_config_name: str | None = arg(None, "The dataset's configuration.")
    train_dir: str | None = arg(None, "Training images, one sub-folder per class.")
    validation_dir: str | None = arg(None, "Validation images, one sub-folder per class.")
    train_val_split: float = arg(0.15, "Held-out fraction of the training data when there is no validation split.")
    image_column_name: str = arg("image", "The dataset column holding the images.")
    label_column_name: str = arg("label", "The dataset column holding the labels.")
    class_names: str | None = arg(None, "Integer labels' names: 'a,b,c' or a file (default: the shards' classes.txt).")
    max_train_samples: int | None = arg(None, "Keep this many training examples.")
    max_eval_samples: int | None = arg(None, "Keep this many evaluation examples.")
    verify_images_limit: int = arg(20000, "Decode every image of folders of at most this many images before training.")
    bad_image_policy: str = arg("skip", "An image that fails to decode: 'skip' (warn, count) or 'stop' (error).")
    streaming: bool = arg(False, "Stream --dataset_name (a Hub id, or parquet/webdataset shards); needs --max_steps.")
    shuffle_buffer_size: int = arg(1000, "With --streaming: each data-loading worker's shuffle buffer, in examples.")

    @property
    def bundled(self) -> bool:
        """No data given: the main job's bundled digits."""
        return self.dataset_name is None and self.train_dir is None


@dataclass
class RecipeArguments:
    recipe: str = arg("none", "'deit': the official CeiT/DeiT ImageNet recipe for every recipe flag left out.")
    auto_augment: str | None = arg(None, "timm's RandAugment config (e.g. 'rand-m9-mstd0.5-inc1'); 'none': off.")
    color_jitter: float = arg(0.0, "ColorJitter strength for brightness/contrast/saturation (--recipe deit: 0).")
    hflip: float = arg(0.5, "Horizontal flip probability (0 for the digits).")
    crop_min_scale: float = arg(0.08, "RandomResizedCrop's smallest crop, as a fraction of the image area.")
    random_erasing: float = arg(0.0, "RandomErasing probability per image (pixel mode), applied on the device.")
    repeated_augmentation: int = arg(0, "Repeated augmentation (DeiT's RASampler): repeats per image; 0 or 1: off.")
    mixup_alpha: float = arg(0.0, "Mixup alpha (0: off).")
    cutmix_alpha: float = arg(0.0, "CutMix alpha (0: off). With Mixup, each batch picks one.")
    drop_path: float | None = arg(None, "Stochastic depth: largest drop-path rate.")
    model_ema_decay: float | None = arg(None, "Keep an EMA of the weights with this decay.")
    sync_batchnorm: bool = arg(False, "Convert BatchNorm to SyncBatchNorm (multi-GPU runs with small batches).")
    torch_threads: int | None = arg(None, "torch's CPU threads per process (1 is often faster on a small shared CPU).")
    keep_freed_cpu_memory: str = arg("auto", "Keep freed CPU memory for reuse: 'on', 'off', 'auto' (on for CPU).")


# The official recipe (DeiT's, used for CeiT). The learning rate scales with the global batch: 5e-4 * batch / 512.
DEIT_RECIPE = {
    "auto_augment": "rand-m9-mstd0.5-inc1",
    "color_jitter": 0.0,  # main.py passes 0.4, which timm drops with RandAugment on: the published runs had none
    "random_erasing": 0.25,
    "repeated_augmentation": 3,
    "mixup_alpha": 0.8,
    "cutmix_alpha": 1.0,
    "drop_path": 0.1,
    "model_ema_decay": 0.99996,
    "label_smoothing_factor": 0.1,
    "weight_decay": 0.05,
    "adam_epsilon": 1e-8,
    "lr_scheduler_type": "cosine_with_min_lr",
    "lr_scheduler_kwargs": {"min_lr": 1e-5},
    "num_train_epochs": 300,
    "warmup_steps": 5 / 300,
    "per_device_train_batch_size": 256,
    "per_device_eval_batch_size": 384,  # the official evaluation batch: 1.5 x the training batch
}
DEIT_BASE_LR = 5e-4

# Every run: the image column is transformed on the fly (so it must not be dropped); evaluate and save every epoch.
RUN_DEFAULTS = {
    "remove_unused_columns": False,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "logging_steps": 10,
    # every CeiT parameter is in the loss' graph: DDP's search for unused ones would only add a graph walk per step
    "ddp_find_unused_parameters": False,
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
# One torch thread: on a busy 2-core machine two made the 280k-parameter model many times slower (contention).
DIGITS_DEFAULTS = dict(SMALL_MODEL_DEFAULTS, num_train_epochs=20, hflip=0.0, crop_min_scale=0.5, torch_threads=1)
# A stream has no epochs: evaluate and save every so many steps.
STREAMING_DEFAULTS = {"eval_strategy": "steps", "eval_steps": 500, "save_strategy": "steps", "save_steps": 500}

# The one parser of the on/off/auto flags (--leff_recompute, --stem_recompute, --keep_freed_cpu_memory)
SWITCH = {"on": True, "off": False, "auto": "auto"}
ARGUMENT_CLASSES = (ModelArguments, DataArguments, RecipeArguments, TrainingArguments)


def job_defaults(given: dict) -> dict:
    """The defaults of the run that the given flags describe."""
    defaults = dict(RUN_DEFAULTS, dataloader_pin_memory=torch.cuda.is_available())  # pinning needs an accelerator
    if bundled := "dataset_name" not in given and "train_dir" not in given:
        defaults.update(DIGITS_DEFAULTS)
    elif not {"model_name_or_path", "preset", "config_overrides"} & set(given):
        defaults.update(SMALL_MODEL_DEFAULTS)
    if given.get("recipe") == "deit":
        defaults.update(DEIT_RECIPE)
    if given.get("streaming"):
        defaults.update(STREAMING_DEFAULTS)
    # no workers for the bundled digits (in memory); DataLoader refuses persistent workers without worker processes
    workers = given.get("dataloader_num_workers", 0 if bundled else default_num_workers())
    return defaults | {"dataloader_num_workers": workers, "dataloader_persistent_workers": workers > 0}


def parse_args(argv: list[str] | None = None):
    """(model, data, recipe, training) arguments of the command line, with the job's defaults for what it leaves out."""
    argv = list(sys.argv[1:] if argv is None else argv)
    probe = HfArgumentParser(ARGUMENT_CLASSES, add_help=False)  # the flags given, every default suppressed
    for action in probe._actions:  # not set_defaults: argparse would parse a SUPPRESS default given that way
        action.default = argparse.SUPPRESS
    given = vars(probe.parse_known_args(argv)[0])
    parser = HfArgumentParser(ARGUMENT_CLASSES, description="Train or fine-tune CeiT with transformers' Trainer.")
    parser.set_defaults(**job_defaults(given))
    model_args, data_args, recipe_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if "output_dir" not in given:
        raise SystemExit("error: --output_dir is required (the folder the trained model is written to).")
    check_args(model_args, data_args, recipe_args, training_args)
    if recipe_args.recipe == "deit" and "learning_rate" not in given:  # needs the world size: not a plain default
        global_batch = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
        training_args.learning_rate = DEIT_BASE_LR * global_batch * training_args.world_size / 512
    training_args.resume_from_checkpoint = resolve_resume_checkpoint(
        training_args.resume_from_checkpoint,
        training_args.output_dir,
        ema=bool(recipe_args.model_ema_decay),
        streams=training_args.world_size if data_args.streaming else 0,
    )
    return model_args, data_args, recipe_args, training_args


def check_args(model_args, data_args, recipe_args, training_args) -> None:  # noqa: C901 (one check per refusal)
    """Refuses, before anything is loaded, flags given a word they do not take or a combination that cannot run."""
    for flag in ("leff_recompute", "stem_recompute", "keep_freed_cpu_memory"):
        value = getattr(recipe_args if flag == "keep_freed_cpu_memory" else model_args, flag)
        if value not in SWITCH:
            raise SystemExit(f"error: --{flag} must be one of {sorted(SWITCH)}, got {value!r}.")
    if recipe_args.auto_augment in ("", "none"):
        recipe_args.auto_augment = None
    if config := recipe_args.auto_augment:
        expected = "expected timm's RandAugment config string, e.g. 'rand-m9-mstd0.5-inc1', or 'none'"
        if config != "rand" and not config.startswith("rand-"):
            raise SystemExit(f"error: --auto_augment {config!r} is not a RandAugment config ({expected}).")
        try:
            rand_augment(config, 224)
        except (AssertionError, ValueError, KeyError) as error:
            raise SystemExit(f"error: --auto_augment {config!r}: {error or 'unknown section'} ({expected}).") from None
    if recipe_args.repeated_augmentation < 0:
        raise SystemExit(
            f"error: --repeated_augmentation must be 0 (off) or a number of repeats, got {recipe_args.repeated_augmentation}."
        )
    if recipe_args.recipe not in ("none", "deit"):
        raise SystemExit(f"error: --recipe must be 'deit' or 'none', got {recipe_args.recipe!r}.")
    if model_args.preset is not None and model_args.preset not in PRESETS:
        raise SystemExit(f"error: unknown --preset {model_args.preset!r}; expected one of {sorted(PRESETS)}.")
    if model_args.model_name_or_path and (model_args.preset or model_args.config_overrides):
        raise SystemExit(
            "error: --model_name_or_path fine-tunes a model; --preset/--config_overrides build a new one."
        )
    if model_args.lora_rank is not None and (model_args.lora_rank <= 0 or not model_args.model_name_or_path):
        raise SystemExit("error: --lora_rank R (R > 0) fine-tunes a pretrained model: give --model_name_or_path too.")
    if model_args.merge_lora and model_args.lora_rank is None:
        raise SystemExit("error: --merge_lora merges LoRA adapters: give --lora_rank too.")
    if training_args.push_to_hub and not training_args.hub_model_id:
        raise SystemExit("error: --push_to_hub needs --hub_model_id NAMESPACE/NAME.")
    if data_args.streaming:  # (refused before any data is read)
        if data_args.dataset_name is None:
            raise SystemExit(
                "error: --streaming reads --dataset_name (a Hub id, or a local folder of parquet shards or webdataset "
                "tars); --train_dir folders are indexed instead (no --streaming)."
            )
        if training_args.max_steps is None or training_args.max_steps <= 0:
            raise SystemExit(
                "error: --streaming needs --max_steps N (N > 0): a stream has no length to count epochs in, so the run "
                "is sized in optimizer steps."
            )
        if data_args.max_train_samples is not None:
            raise SystemExit(
                "error: --max_train_samples does not apply to --streaming: size the run with --max_steps."
            )
        if data_args.shuffle_buffer_size < 1:
            raise SystemExit(f"error: --shuffle_buffer_size must be at least 1, got {data_args.shuffle_buffer_size}.")
        training_args.ignore_data_skip = True  # Trainer's skipping would read the skipped batches again
    if fsdp_requested(training_args):  # refused also on CPU processes, which run DDP instead
        plugin = getattr(training_args, "fsdp_plugin_args", None) or {  # --fsdp_config, else accelerate's environment
            "fsdp_version": os.environ.get("FSDP_VERSION", "1"),
            "activation_checkpointing": strtobool(os.environ.get("FSDP_ACTIVATION_CHECKPOINTING", "false")),
        }
        try:
            check_fsdp_settings(int(plugin["fsdp_version"]), bool(plugin.get("activation_checkpointing", False)))
        except ValueError as error:
            raise SystemExit(f"error: {error}") from None


def fsdp_requested(args) -> bool:
    """`--fsdp`, or an accelerate config with `distributed_type: FSDP` (passed on as ACCELERATE_USE_FSDP)."""
    return bool(args.fsdp) or bool(strtobool(os.environ.get("ACCELERATE_USE_FSDP", "false")))


EMA_FILE = "ema.safetensors"


def checkpoint_problems(folder, ema: bool = False, streams: int = 0) -> list[str]:
    """What keeps `folder` from being a complete checkpoint, with the EMA (`ema`) and `streams` stream positions: Trainer
    writes the weights, `trainer_state.json`, then the callbacks theirs; a run killed while saving leaves some out."""
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
        if problem := safetensors_problem(weights):
            problems.append(f"model.safetensors is damaged or truncated ({problem})")
    elif not any((folder / name).is_file() for name in ("model.safetensors.index.json", "pytorch_model.bin")):
        problems.append("the model weights are missing")
    if ema and not (folder / EMA_FILE).is_file():
        problems.append(f"{EMA_FILE} (the EMA of the weights, written after the trainer state) is missing")
    for rank in range(streams):
        name = STREAM_STATE_FILE.format(rank=rank)
        try:
            json.loads((folder / name).read_text(encoding="utf-8"))["workers"]
        except (OSError, ValueError, KeyError, TypeError):
            problems.append(
                f"{name} (the stream position of process {rank}, written after the trainer state) is missing or "
                "incomplete"
            )
    return problems


def resolve_resume_checkpoint(value: str | None, output_dir: str, ema: bool = False, streams: int = 0) -> str | None:
    """The checkpoint `--resume_from_checkpoint` names, checked to be complete (`checkpoint_problems`). `auto` picks
    the newest complete `checkpoint-N` of `output_dir` (None when there is none); `latest` fails then."""
    if value is None:
        return None
    if value in ("auto", "latest"):
        for path in reversed(sort_checkpoints(output_dir) if Path(output_dir).is_dir() else []):
            problems = checkpoint_problems(path, ema, streams)
            if not problems:
                logger.info("Resuming from %s, the newest complete checkpoint in %s", path, output_dir)
                return str(path)
            logger.warning("Skipping the incomplete checkpoint %s: %s.", path, "; ".join(problems))
        if value == "latest":
            raise SystemExit(f"error: --resume_from_checkpoint latest: no complete checkpoint in {output_dir!r}.")
        return None
    if problems := checkpoint_problems(value, ema, streams):
        raise SystemExit(
            f"error: --resume_from_checkpoint {value!r} is not a complete checkpoint: {'; '.join(problems)}. "
            "`--resume_from_checkpoint auto` resumes from the newest complete checkpoint in --output_dir."
        )
    return value
