# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""CeiT as the backbone of transformers' `UperNetForSemanticSegmentation`, trained on a small segmentation task made
from real images: scikit-learn's handwritten digits pasted on a canvas, each pixel labelled with its digit (or
background). The engine of `scripts/segmentation_example.py` and of its test."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F
from transformers import UperNetConfig, UperNetForSemanticSegmentation

from ceit_hf.configuration_ceit import CeiTConfig


NUM_LABELS = 11  # background + digits 0-9


def digit_canvases(count: int, size: int = 64, digits_per_canvas: int = 2, digit_size: int = 32, seed: int = 0):
    """`count` grayscale canvases `(count, 3, size, size)` in [0, 1] (three equal channels) with up to
    `digits_per_canvas` digits each, and their masks `(count, size, size)`: 0 background, 1 + digit where a digit's
    stroke is (upscaled pixel intensity above 0.2)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(digits.images / 16.0).float()[:, None]
    images = F.interpolate(images, size=(digit_size, digit_size), mode="bilinear", align_corners=False)[:, 0]
    canvases = torch.zeros(count, size, size)
    masks = torch.zeros(count, size, size, dtype=torch.long)
    for index in range(count):
        for _ in range(rng.integers(1, digits_per_canvas + 1)):
            pick = rng.integers(len(images))
            top, left = rng.integers(0, size - digit_size + 1, size=2)
            patch = images[pick]
            region = (slice(top, top + digit_size), slice(left, left + digit_size))
            canvases[index][region] = torch.maximum(canvases[index][region], patch)
            masks[index][region] = torch.where(patch > 0.2, int(digits.target[pick]) + 1, masks[index][region])
    return canvases[:, None].expand(-1, 3, -1, -1).contiguous(), masks


def small_upernet(
    image_size: int = 64, out_features=("stem", "stage2", "stage3", "stage4")
) -> UperNetForSemanticSegmentation:
    """UperNet over a small official-layout CeiT (width 64, 4 blocks, a 16x16 stem map and 8x8 tokens at 64 pixels):
    the stem map and three stages as its feature pyramid."""
    backbone = CeiTConfig.from_preset(
        "ceit_tiny_patch16_224",
        image_size=image_size,
        d_model=64,
        encoder_num_heads=2,
        num_encoder_blocks=4,
        i2t_out_channels=32,
        patch_size=2,
        out_features=list(out_features),
    )
    config = UperNetConfig(
        backbone_config=backbone,
        num_labels=NUM_LABELS,
        hidden_size=64,
        pool_scales=[1, 2, 4],
        auxiliary_channels=32,
        auxiliary_in_channels=backbone.d_model,
        loss_ignore_index=255,
    )
    return UperNetForSemanticSegmentation(config)


def mean_iou(logits: torch.Tensor, masks: torch.Tensor, num_labels: int = NUM_LABELS) -> float:
    """Mean intersection over union of the predicted classes over the classes present in prediction or target.
    (`evaluate`'s "mean_iou" is a Hub script, which cannot be fetched offline.)"""
    predictions = logits.argmax(1)
    ious = []
    for label in range(num_labels):
        predicted, actual = predictions == label, masks == label
        union = (predicted | actual).sum().item()
        if union:
            ious.append((predicted & actual).sum().item() / union)
    return float(np.mean(ious))


def train_segmentation(steps: int = 800, batch_size: int = 16, learning_rate: float = 1e-3, seed: int = 0, log=print):
    """Trains `small_upernet` on fresh digit canvases and evaluates on held-out ones before and after: returns the
    training losses and the held-out loss and mean IoU at the start and the end."""
    torch.manual_seed(seed)
    model = small_upernet()
    train_images, train_masks = digit_canvases(steps * batch_size // 4 + batch_size, seed=seed)
    test_images, test_masks = digit_canvases(64, seed=seed + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)

    def evaluate():
        model.eval()
        with torch.no_grad():
            out = model(test_images, labels=test_masks)
        model.train()
        return {"loss": out.loss.item(), "mean_iou": mean_iou(out.logits, test_masks)}

    history = {"before": evaluate(), "train_loss": []}
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        batch = torch.randint(len(train_images), (batch_size,), generator=generator)
        loss = model(train_images[batch], labels=train_masks[batch]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history["train_loss"].append(loss.item())
        if log and (step + 1) % max(1, steps // 5) == 0:
            log(f"step {step + 1}/{steps}: training loss {loss.item():.3f}")
    history["after"] = evaluate()
    return model, history
