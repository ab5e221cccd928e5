# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""The model of a training run (the small CeiT, a preset, or a pretrained model with LoRA) and its image processor."""

from __future__ import annotations

import ast
import logging

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

from ..configuration_ceit import CeiTConfig
from ..image_processing_ceit import CeiTImageProcessor
from ..modeling_ceit import CeiTForImageClassification
from .arguments import ModelArguments, RecipeArguments


logger = logging.getLogger("ceit_hf.training")


def small_config(image_size: int, id2label: dict[int, str], **overrides):
    """The small CeiT the main job trains from scratch: the official architecture at width 64 with 4 blocks and
    a 4x4 (images <= 64 px) or wider token grid."""
    settings = {"d_model": 64, "encoder_num_heads": 2, "lca_encoder_num_heads": 2, "num_encoder_blocks": 4}
    settings |= {"i2t_out_channels": 32, "image_size": image_size, "patch_size": 2 if image_size <= 64 else 4}
    return CeiTConfig.from_preset("ceit_tiny_patch16_224", **settings | {"id2label": id2label} | overrides)


def parse_config_overrides(text: str | None) -> dict:
    """'k=v,k=v' -> {k: python value}; values are Python literals where they parse (1e-3, True, None), else text."""
    overrides = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        if "=" not in item:
            raise SystemExit(f"error: --config_overrides item {item!r} is not of the form key=value.")
        key, value = (s.strip() for s in item.split("=", 1))
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return overrides


def build_model(model_args: ModelArguments, recipe_args: RecipeArguments, labels: list[str], image_size: int | None):
    """A new CeiT (`--preset`, else the small one, with `--config_overrides` as config keywords) or the pretrained
    `--model_name_or_path` with a classifier for `labels`."""
    id2label = dict(enumerate(labels))
    overrides = parse_config_overrides(model_args.config_overrides)
    if recipe_args.drop_path:
        overrides.update(stochastic_depth=True, stochastic_depth_mp=recipe_args.drop_path)
    if model_args.model_name_or_path:
        name, hub = model_args.model_name_or_path, {**hub_options(model_args), "revision": model_args.model_revision}
        label2id = {label: i for i, label in id2label.items()}
        try:
            config = AutoConfig.from_pretrained(name, id2label=id2label, label2id=label2id, **hub, **overrides)
        except ValueError as error:  # a typo in --config_overrides
            raise SystemExit(f"error: cannot load the model config with --config_overrides: {error}") from None
        return AutoModelForImageClassification.from_pretrained(
            name, config=config, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes, **hub
        )
    try:
        if model_args.preset:
            if image_size is not None:
                overrides.setdefault("image_size", image_size)
            config = CeiTConfig.from_preset(model_args.preset, id2label=id2label, **overrides)
        else:
            config = small_config(image_size, id2label, **overrides)
    except (TypeError, ValueError) as error:
        raise SystemExit(f"error: cannot build the model from --preset/--config_overrides: {error}") from None
    return CeiTForImageClassification(config)


def hub_options(model_args: ModelArguments) -> dict:
    return {name: getattr(model_args, name) for name in ("cache_dir", "token", "trust_remote_code")}


def add_lora_adapters(model, model_args: ModelArguments):
    """`model` as a PEFT model with LoRA adapters on `--lora_target_modules` and the classifier trained in full."""
    try:
        import peft
    except ImportError:
        raise SystemExit("error: --lora_rank needs peft: pip install -e '.[peft]'.") from None
    targets = [name.strip() for name in model_args.lora_target_modules.split(",") if name.strip()]
    modules = [(name.rsplit(".", 1)[-1], module) for name, module in model.named_modules()]
    if unknown := [name for name in targets if name not in {short for short, _ in modules}]:
        raise SystemExit(
            f"error: --lora_target_modules {unknown} name no module of the model (e.g. qkv, proj, expand)."
        )
    # a name the configuration leaves as Identity (LeFF's `pointwise` without leff_depthwise_separable) has no weights
    layers = {short for short, module in modules if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))}
    targets = [name for name in targets if name in layers]
    config = peft.LoraConfig(
        r=model_args.lora_rank,
        lora_alpha=model_args.lora_alpha or 2 * model_args.lora_rank,
        lora_dropout=model_args.lora_dropout,
        target_modules=targets,
        modules_to_save=["classifier"],
    )
    # The pretrained BatchNorm statistics stay as they are (momentum 0), so the adapter file holds all that changed.
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.0
    model = peft.get_peft_model(model, config)
    trainable, total = model.get_nb_trainable_parameters()
    logger.info("LoRA rank %d on %s: %s of %s parameters trainable", config.r, targets, f"{trainable:,}", f"{total:,}")
    return model


def load_image_processor(source: str | None, model, **hub_kwargs):
    """The image processor saved at `source` when there is one, else the CeiT evaluation transform at the model's
    input size (a DeiT's `image_size` included)."""
    if source:
        try:
            return AutoImageProcessor.from_pretrained(source, **hub_kwargs)
        except (OSError, ValueError) as error:
            logger.warning("No image processor in %s (%s); using the CeiT default.", source, error)
    config = model.config
    height, width = getattr(config, "image_hw", None) or (config.image_size, config.image_size)
    return CeiTImageProcessor(crop_size={"height": height, "width": width})


def image_processor_for(model_args: ModelArguments, model):
    source = model_args.image_processor_name or model_args.model_name_or_path
    return load_image_processor(source, model, **hub_options(model_args))
