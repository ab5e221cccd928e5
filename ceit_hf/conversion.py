# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Official CeiT checkpoints (github.com/coeusguo/ceit) -> `CeiTForImageClassification` weights and folders."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from .configuration_ceit import PRESETS, CeiTConfig


# Official key pattern -> the key here; LeFF's 1x1 convolutions (conv1, conv3) become Linear layers (`_POINTWISE`).
_RULES = [
    (r"i2t\.backbone\.conv\.(.+)", r"ceit.embeddings.image_to_tokens.conv.\1"),
    (r"i2t\.backbone\.bn\.(.+)", r"ceit.embeddings.image_to_tokens.norm.\1"),
    (r"i2t\.proj\.(.+)", r"ceit.embeddings.patch_embeddings.projection.\1"),
    (r"cls_token", r"ceit.embeddings.cls_token"),
    (r"pos_embed", r"ceit.embeddings.position_embeddings"),
    (r"pos_layer_embed", r"ceit.lca.layer_position_embeddings"),
    (r"blocks\.(\d+)\.(norm1|norm2)\.(.+)", r"ceit.encoder.layers.\1.\2.\3"),
    (r"blocks\.(\d+)\.attn\.(qkv|proj)\.(.+)", r"ceit.encoder.layers.\1.attention.\2.\3"),
    (r"blocks\.(\d+)\.leff\.conv1\.(.+)", r"ceit.encoder.layers.\1.leff.expand.\2"),
    (r"blocks\.(\d+)\.leff\.bn1\.(.+)", r"ceit.encoder.layers.\1.leff.expand_norm.\2"),
    (r"blocks\.(\d+)\.leff\.conv2\.(.+)", r"ceit.encoder.layers.\1.leff.depthwise.\2"),
    (r"blocks\.(\d+)\.leff\.bn2\.(.+)", r"ceit.encoder.layers.\1.leff.depthwise_norm.\2"),
    (r"blocks\.(\d+)\.leff\.conv3\.(.+)", r"ceit.encoder.layers.\1.leff.reduce.\2"),
    (r"blocks\.(\d+)\.leff\.bn3\.(.+)", r"ceit.encoder.layers.\1.leff.reduce_norm.\2"),
    (r"lca\.(norm1|norm2)\.(.+)", r"ceit.lca.\1.\2"),
    (r"lca\.attn\.(qkv|proj)\.(.+)", r"ceit.lca.attention.\1.\2"),
    (r"lca\.feedforward\.(fc1|fc2)\.(.+)", r"ceit.lca.mlp.\1.\2"),
    (r"norm\.(.+)", r"ceit.layernorm.\1"),
    (r"head\.(.+)", r"classifier.\1"),
]
_RULES = [(re.compile(rf"^{pattern}$"), target) for pattern, target in _RULES]
_POINTWISE = re.compile(r"^ceit\.encoder\.layers\.\d+\.leff\.(expand|reduce)\.weight$")


class CheckpointConversionError(ValueError):
    """The checkpoint is not an official CeiT checkpoint, or does not fit the target configuration."""


def convert_official_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames (and, for LeFF's 1x1 convolutions, reshapes) an official state_dict. Unknown keys raise."""
    renamed = {key: next((p.sub(target, key) for p, target in _RULES if p.match(key)), None) for key in state_dict}
    if unknown := [key for key, new_key in renamed.items() if new_key is None]:
        raise CheckpointConversionError(
            f"{len(unknown)} key(s) are not official CeiT keys, e.g. {unknown[:5]}; is this a CeiT checkpoint?"
        )
    return {
        renamed[key]: tensor.flatten(1) if _POINTWISE.match(renamed[key]) and tensor.ndim == 4 else tensor
        for key, tensor in state_dict.items()
    }


def checkpoint_architecture(state_dict: dict[str, torch.Tensor]) -> dict[str, int]:
    """`d_model`, `num_encoder_blocks`, `image_size` and `num_classes` from an official state_dict's tensor shapes."""
    expected = {"i2t.proj.weight": 4, "pos_embed": 3, "head.weight": 2}  # key -> number of dimensions
    if absent := [key for key in expected if key not in state_dict]:
        raise CheckpointConversionError(
            f"The checkpoint has no {', '.join(map(repr, absent))}: it is not an official CeiT checkpoint "
            f"(its keys include {list(state_dict)[:5]})."
        )
    for key, ndim in expected.items():
        if state_dict[key].ndim != ndim:
            raise CheckpointConversionError(
                f"The checkpoint's {key!r} has shape {tuple(state_dict[key].shape)}, not the {ndim}-dimensional "
                "tensor of an official CeiT."
            )
    blocks = {int(m.group(1)) for m in (re.match(r"blocks\.(\d+)\.", k) for k in state_dict) if m}
    if not blocks:
        raise CheckpointConversionError(
            "The checkpoint has no encoder blocks ('blocks.N.*'): it is not an official CeiT checkpoint."
        )
    num_tokens = state_dict["pos_embed"].shape[1] - 1
    grid = round(max(num_tokens, 0) ** 0.5)
    if num_tokens <= 0 or grid * grid != num_tokens:
        raise CheckpointConversionError(f"pos_embed holds {num_tokens} patch positions, not a square grid.")
    return {
        "d_model": state_dict["i2t.proj.weight"].shape[0],
        "num_encoder_blocks": 1 + max(blocks),
        "image_size": grid * 16,  # the official stem and patch size: 16 pixels per token
        "num_classes": state_dict["head.weight"].shape[0],
    }


def infer_config(state_dict: dict[str, torch.Tensor], **overrides) -> CeiTConfig:
    """The `CeiTConfig` of an official checkpoint's tensor shapes, with the heads of the preset of that width."""
    settings = checkpoint_architecture(state_dict)
    width = settings.pop("d_model")
    candidates = [name for name, preset in PRESETS.items() if preset["d_model"] == width]
    if not candidates:
        widths = sorted({preset["d_model"] for preset in PRESETS.values()})
        raise CheckpointConversionError(
            f"No official CeiT variant has width {width} (the official widths are {widths}). For another width, "
            "build a CeiTConfig and call official_to_model(state_dict, config)."
        )
    # presets of one width differ only in what the checkpoint's shapes give (image size, depth, classes)
    return CeiTConfig.from_preset(candidates[0], **{**settings, **overrides})


def load_official_checkpoint(path: str | os.PathLike, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The model state_dict of an official checkpoint file: a training checkpoint (a dict holding `model`, and
    `model_ema` when EMA was on) or a bare state_dict. Loaded with `weights_only=True`: no arbitrary unpickling."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}.")
    try:
        # Official training checkpoints also store their argparse.Namespace of arguments: allow that plain class.
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        text = str(error)
        if refused := re.search(r"Unsupported global: GLOBAL ([\w.]+)", text):
            raise CheckpointConversionError(
                f"{path} holds a pickled Python object other than tensors and plain containers ({refused.group(1)}). "
                "Unpickling it could run arbitrary code, so it is not loaded (torch.load with weights_only=True). "
                "Save the state_dict alone (torch.save(model.state_dict(), path)) where the checkpoint is trusted."
            ) from error
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, re.DOTALL)
        detail = detail.group(1) if detail else (text.strip().splitlines() or [""])[0]
        detail = detail.split(". ")[0].rstrip(".")  # the first sentence; torch's advice that follows does not apply
        raise CheckpointConversionError(
            f"Could not read {path} as a PyTorch checkpoint (a file written by torch.save): it is damaged, truncated "
            f"or of another format ({type(error).__name__}{': ' + detail if detail else ''}). It was read with "
            "weights_only=True, so no pickled code was run."
        ) from error
    if not isinstance(checkpoint, dict):
        raise CheckpointConversionError(f"{path} holds a {type(checkpoint).__name__}, not a CeiT state_dict.")
    key = "model_ema" if use_ema else "model"
    if use_ema and key not in checkpoint:
        raise CheckpointConversionError(
            f"--use_ema: {path} has no 'model_ema' entry (its keys: {sorted(checkpoint)[:10]})."
        )
    state_dict = checkpoint.get(key, checkpoint)
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        where = f"its {key!r} entry" if key in checkpoint else "it has no 'model' entry and"
        raise CheckpointConversionError(f"{path}: {where} is not a state_dict of tensors.")
    if state_dict and all(k.startswith("module.") for k in state_dict):  # saved from a DistributedDataParallel wrapper
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    return state_dict


def official_to_model(state_dict: dict[str, torch.Tensor], config: CeiTConfig | None = None):
    """A `CeiTForImageClassification` with an official state_dict's weights; every key must map, none left random."""
    from .modeling_ceit import CeiTForImageClassification

    config = config or infer_config(state_dict)
    converted = convert_official_state_dict(state_dict)
    model = CeiTForImageClassification(config)
    expected = model.state_dict()
    problems = {
        "missing from the checkpoint": sorted(set(expected) - set(converted)),
        "not in the model": sorted(set(converted) - set(expected)),
        "shape mismatches": [
            f"{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(expected[k].shape)}"
            for k in sorted(set(converted) & set(expected))
            if converted[k].shape != expected[k].shape
        ],
    }
    found = [f"{len(keys)} {kind}: {keys[:8]}{' ...' * (len(keys) > 8)}" for kind, keys in problems.items() if keys]
    if found:
        raise CheckpointConversionError("The checkpoint does not fit the CeiT configuration; " + "; ".join(found))
    model.load_state_dict(converted, strict=True)
    return model.eval()


def convert_checkpoint(
    checkpoint: str | os.PathLike, output_dir: str | os.PathLike, use_ema: bool = False, preset: str | None = None
):
    """Converts an official checkpoint file into a `from_pretrained` folder (config, weights, processor, card)."""
    from .image_processing_ceit import CeiTImageProcessor
    from .model_card import variant_card

    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise CheckpointConversionError(f"The output path {output_dir} exists and is not a folder.")
    state_dict = load_official_checkpoint(checkpoint, use_ema=use_ema)
    if preset is None:
        config = infer_config(state_dict)
    elif preset not in PRESETS:
        raise CheckpointConversionError(f"Unknown preset {preset!r}; expected one of {sorted(PRESETS)}.")
    else:
        found, wanted = checkpoint_architecture(state_dict), PRESETS[preset]
        differences = [
            f"{label} {wanted[field]} (checkpoint: {found[field]})"
            for field, label in (("d_model", "width"), ("num_encoder_blocks", "depth"), ("image_size", "image size"))
            if found[field] != wanted[field]
        ]
        if differences:
            raise CheckpointConversionError(
                f"The checkpoint is not a {preset}: the preset has {', '.join(differences)}."
            )
        config = CeiTConfig.from_preset(preset, num_classes=found["num_classes"])
    if config.num_labels == 1000:
        from torchvision.models._meta import _IMAGENET_CATEGORIES  # the ImageNet-1k class names

        labels = dict(enumerate(_IMAGENET_CATEGORIES))
        config.id2label, config.label2id = labels, {name: i for i, name in labels.items()}
    model = official_to_model(state_dict, config)
    height, width = config.image_hw
    processor = CeiTImageProcessor(crop_size={"height": height, "width": width})
    card = variant_card(config.preset_name) if config.preset_name is not None else None

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        if card is not None:
            (staging / "README.md").write_text(card, encoding="utf-8")
        output_dir.mkdir(exist_ok=True)
        # Weights last: until they are in place the folder does not load.
        for path in sorted(staging.iterdir(), key=lambda path: path.suffix == ".safetensors"):
            os.replace(path, output_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model
