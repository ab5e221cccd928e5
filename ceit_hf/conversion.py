# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Official CeiT checkpoints (github.com/coeusguo/ceit) -> `CeiTForImageClassification` weights.

The official state_dict keys and their counterparts here:

    i2t.backbone.conv.*            ceit.embeddings.image_to_tokens.conv.*
    i2t.backbone.bn.*              ceit.embeddings.image_to_tokens.norm.*
    i2t.proj.*                     ceit.embeddings.patch_embeddings.projection.*
    cls_token / pos_embed          ceit.embeddings.cls_token / .position_embeddings
    blocks.N.norm{1,2}.*           ceit.encoder.layers.N.norm{1,2}.*
    blocks.N.attn.{qkv,proj}.*     ceit.encoder.layers.N.attention.{qkv,proj}.*
    blocks.N.leff.conv1/bn1        ceit.encoder.layers.N.leff.expand / expand_norm   (1x1 conv -> Linear)
    blocks.N.leff.conv2/bn2        ceit.encoder.layers.N.leff.depthwise / depthwise_norm
    blocks.N.leff.conv3/bn3        ceit.encoder.layers.N.leff.reduce / reduce_norm   (1x1 conv -> Linear)
    pos_layer_embed                ceit.lca.layer_position_embeddings
    lca.norm{1,2}.*                ceit.lca.norm{1,2}.*
    lca.attn.{qkv,proj}.*          ceit.lca.attention.{qkv,proj}.*
    lca.feedforward.fc{1,2}.*      ceit.lca.mlp.fc{1,2}.*
    norm.* / head.*                ceit.layernorm.* / classifier.*
"""

from __future__ import annotations

import re

import torch

from .configuration_ceit import PRESETS, CeiTConfig


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


def rename_official_key(key: str) -> str | None:
    """The name of official `key` in `CeiTForImageClassification`, or None if it is not an official CeiT key."""
    for pattern, target in _RULES:
        if pattern.match(key):
            return pattern.sub(target, key)
    return None


def convert_official_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames (and, for LeFF's 1x1 convolutions, reshapes) an official state_dict. Unknown keys raise."""
    unknown = [key for key in state_dict if rename_official_key(key) is None]
    if unknown:
        raise CheckpointConversionError(
            f"{len(unknown)} key(s) are not official CeiT keys, e.g. {unknown[:5]}; is this a CeiT checkpoint?"
        )
    converted = {}
    for key, tensor in state_dict.items():
        new_key = rename_official_key(key)
        if _POINTWISE.match(new_key) and tensor.ndim == 4:
            tensor = tensor.flatten(1)
        converted[new_key] = tensor
    return converted


def infer_config(state_dict: dict[str, torch.Tensor], **overrides) -> CeiTConfig:
    """The `CeiTConfig` of an official checkpoint, read off its tensor shapes (width, depth, image size,
    number of classes); the number of heads comes from the preset of that width."""
    for key in ("pos_embed", "i2t.proj.weight", "head.weight"):
        if key not in state_dict:
            raise CheckpointConversionError(f"The checkpoint has no {key!r}: it is not an official CeiT checkpoint.")
    width = state_dict["i2t.proj.weight"].shape[0]
    depth = 1 + max(int(m.group(1)) for m in (re.match(r"blocks\.(\d+)\.", k) for k in state_dict) if m)
    num_tokens = state_dict["pos_embed"].shape[1] - 1
    grid = round(num_tokens**0.5)
    if grid * grid != num_tokens:
        raise CheckpointConversionError(f"pos_embed holds {num_tokens} patch positions, not a square grid.")
    image_size = grid * 16  # the official stem and patch size: 16 pixels per token
    candidates = [name for name, preset in PRESETS.items() if preset["d_model"] == width]
    if not candidates:
        raise CheckpointConversionError(
            f"No official CeiT variant has width {width}; pass a preset that matches the checkpoint."
        )
    by_size = [name for name in candidates if PRESETS[name]["image_size"] == image_size]
    preset = (by_size or candidates)[0]
    settings = {"num_encoder_blocks": depth, "image_size": image_size, "num_classes": state_dict["head.weight"].shape[0]}
    return CeiTConfig.from_preset(preset, **{**settings, **overrides})
