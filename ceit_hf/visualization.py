# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""What a CeiT looks at: the class token's attention in each block, its rollout (Abnar & Zuidema 2020) and the LCA's
weights over the blocks, drawn over the input image in its original aspect ratio (docs/attention.md)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _heads(attention: torch.Tensor, head: int | None, dim: int) -> torch.Tensor:
    """Mean over the heads axis `dim`, or the one `head` (ValueError naming the valid range)."""
    if head is None:
        return attention.mean(dim)
    if not 0 <= head < (count := attention.shape[dim]):
        raise ValueError(f"head {head} is out of range: this attention has {count} heads, 0..{count - 1}.")
    return attention.select(dim, head)


def class_token_maps(attentions, grid_size: tuple[int, int], head: int | None = None) -> torch.Tensor:
    """Each block's class-token attention over the patches, renormalised, `(..., blocks, rows, cols)`; `head`: one."""
    rows = _heads(torch.stack(tuple(attentions), dim=-4), head, dim=-3)[..., 0, 1:]
    return (rows / rows.sum(-1, keepdim=True)).unflatten(-1, tuple(grid_size))


def attention_rollout(attentions, grid_size: tuple[int, int]) -> torch.Tensor:
    """Attention rollout, `(..., rows, cols)`: the class token's row over the patches (renormalised) of
    `A'_L ... A'_1`, `A' = 0.5 A + 0.5 I` the mean over heads of each block's attention, rows renormalised."""
    rollout = None
    for attention in attentions:
        mixed = 0.5 * attention.float().mean(-3) + 0.5 * torch.eye(attention.shape[-1], device=attention.device)
        mixed = mixed / mixed.sum(-1, keepdim=True)
        rollout = mixed if rollout is None else mixed @ rollout
    row = rollout[..., 0, 1:]
    return (row / row.sum(-1, keepdim=True)).unflatten(-1, tuple(grid_size))


def lca_weights(lca_attentions: torch.Tensor, head: int | None = None) -> torch.Tensor:
    """The LCA's weights over the blocks' class tokens, `(..., blocks)`, from `outputs.lca_attentions[0]`."""
    return _heads(lca_attentions, head, dim=-3)[..., 0, :]


@dataclass
class AttentionMaps:
    """`attention_maps` of a batch (the tensors' first axis)."""

    blocks: torch.Tensor
    rollout: torch.Tensor
    lca: torch.Tensor
    logits: torch.Tensor
    grid_size: tuple[int, int]


def attention_maps(model, pixel_values: torch.Tensor, head: int | None = None) -> AttentionMaps:
    """The class-token maps, rollout and LCA weights of a CeiT `model` on `pixel_values` of any size it accepts."""
    grid_size = model.config.token_grid_size(*pixel_values.shape[-2:])
    previous, training = model.config._attn_implementation, model.training
    model.set_attn_implementation("eager")  # the only one that returns attention probabilities
    try:
        with torch.no_grad():
            # interpolate_pos_encoding=True accepts other input sizes and changes nothing at the trained one
            outputs = model.eval()(pixel_values, interpolate_pos_encoding=True, output_attentions=True)
    finally:  # also on error
        model.set_attn_implementation(previous)
        model.train(training)
    attentions = [attention.float().cpu() for attention in outputs.attentions]  # small; plotted on the CPU
    lca = outputs.lca_attentions  # a one-tensor tuple; a bare tensor from the remote code of older saved folders
    lca = lca[0] if isinstance(lca, tuple) else lca
    return AttentionMaps(
        blocks=class_token_maps(attentions, grid_size, head),
        rollout=attention_rollout(attentions, grid_size),
        lca=lca_weights(lca.float().cpu(), head),
        logits=(outputs.logits if hasattr(outputs, "logits") else outputs.pooler_output).float().cpu(),
        grid_size=grid_size,
    )


def token_grid_box(config, processor, image_hw: tuple[int, int]) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in the original image's pixels of what the token grid covers after `processor`."""
    from PIL import Image

    height, width = image_hw
    blank = Image.new("RGB", (width, height))
    resized = processor(images=blank, do_center_crop=False, return_tensors="pt")["pixel_values"].shape[-2:]
    top = left = 0
    crop_h, crop_w = resized
    if processor.do_center_crop:
        crop_h, crop_w = processor.crop_size.height, processor.crop_size.width
        # the offsets of CeiTImageProcessor.center_crop (torchvision's CenterCrop rounding)
        top, left = int(round((resized[0] - crop_h) / 2.0)), int(round((resized[1] - crop_w) / 2.0))
    rows, cols = config.token_grid_size(crop_h, crop_w)
    stride = config.patch_size * config.i2t_conv_stride * config.i2t_max_pool_stride
    cover_h, cover_w = min(crop_h, rows * stride), min(crop_w, cols * stride)
    scale_y, scale_x = height / resized[0], width / resized[1]
    return left * scale_x, top * scale_y, (left + cover_w) * scale_x, (top + cover_h) * scale_y


def to_image_pixels(attention_map: torch.Tensor, box, image_hw: tuple[int, int]) -> torch.Tensor:
    """A `(..., rows, cols)` map as `(..., height, width)` pixels: each token's mass spread over its cell of `box`."""
    rows, cols = attention_map.shape[-2:]
    left, top, right, bottom = box

    def cells(pixels: int, start: float, stop: float, count: int) -> torch.Tensor:
        """The cell (0..count-1, -1 outside) under each pixel centre along one side."""
        index = torch.floor((torch.arange(pixels, dtype=torch.float64) + 0.5 - start) / (stop - start) * count).long()
        return torch.where((index >= 0) & (index < count), index, -1)

    row, col = cells(image_hw[0], top, bottom, rows), cells(image_hw[1], left, right, cols)
    inside = (row[:, None] >= 0) & (col[None, :] >= 0)
    cell = (row[:, None] * cols + col[None, :]).clamp(min=0)
    pixels_per_cell = torch.bincount(cell[inside], minlength=rows * cols).clamp(min=1)
    return (attention_map.flatten(-2) / pixels_per_cell)[..., cell] * inside


def plot_attention(image, maps: AttentionMaps, box, title: str = "", index: int = 0):
    """A matplotlib `Figure` of image `index` of `maps`: the input, the rollout, the LCA weights, each block's map."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    pixels = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    height, width = pixels.shape[:2]
    left, top, right, bottom = box
    blocks = maps.blocks.shape[1]
    cols = min(max(blocks, 4), 6)  # block maps per row
    block_rows = -(-blocks // cols)
    top_height, row_height = 3.8 * height / width + 0.8, 12 / cols * height / width + 0.4  # with their titles
    figure = Figure(figsize=(12, top_height + block_rows * row_height), layout="constrained")
    top_row, block_grid = figure.subfigures(2, 1, height_ratios=(top_height, block_rows * row_height))
    panels = top_row.subplots(1, 3)

    def overlay(axes, attention_map, name):
        axes.imshow(pixels, extent=(0, width, height, 0), interpolation="nearest")
        # each map on its own scale, from 0 to its largest weight; opacity grows with the weight, so the image
        # stays visible where the class token does not look
        weight = (attention_map / attention_map.max()).numpy()
        colours = colormaps["inferno"](weight)
        colours[..., 3] = 0.15 + 0.7 * weight
        axes.imshow(colours, extent=(left, right, bottom, top), interpolation="nearest")
        axes.vlines(np.linspace(left, right, weight.shape[1] + 1), top, bottom, color="white", lw=0.4, alpha=0.5)
        axes.hlines(np.linspace(top, bottom, weight.shape[0] + 1), left, right, color="white", lw=0.4, alpha=0.5)
        # dim what the token grid does not cover (outside the processor's crop)
        margins = [(0, 0, width, top), (0, bottom, width, height), (0, top, left, bottom), (right, top, width, bottom)]
        for x0, y0, x1, y1 in margins:
            axes.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, color="black", alpha=0.55, lw=0))
        axes.set(xlim=(0, width), ylim=(height, 0), xticks=[], yticks=[], title=name)

    panels[0].imshow(pixels, extent=(0, width, height, 0), interpolation="nearest")  # pixel edges at integers
    panels[0].add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, color="cyan", lw=1.5))
    panels[0].set(xticks=[], yticks=[], title=f"input {width}x{height} (token grid: cyan)")
    overlay(panels[1], maps.rollout[index], "attention rollout")
    lca, numbers = maps.lca[index].numpy(), np.arange(1, blocks + 1)
    panels[2].bar(numbers, lca, color="tab:orange")
    title_lca = "LCA: weight of each block's class token"
    panels[2].set(xlabel="block", ylabel="LCA weight", title=title_lca, xticks=numbers, ylim=(0, max(lca) * 1.15))
    grid = block_grid.add_gridspec(block_rows, cols)
    for block in range(blocks):
        axes = block_grid.add_subplot(grid[block // cols, block % cols])
        overlay(axes, maps.blocks[index, block], f"block {block + 1}  (LCA {lca[block]:.2f})")
    block_grid.suptitle("class token's attention in each block", fontsize="medium")
    if title:
        figure.suptitle(title)
    return figure


def attention_figure(model, processor, image, head: int | None = None):
    """`(figure, maps)` of `plot_attention` for one PIL `image` (the predicted label in the title)."""
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"].to(model.device)
    maps = attention_maps(model, pixel_values, head)
    box = token_grid_box(model.config, processor, (image.height, image.width))
    probabilities = maps.logits[0].softmax(-1)
    label = int(probabilities.argmax())
    name = model.config.id2label.get(label, str(label))
    heads = "mean over heads" if head is None else f"head {head}"
    title = f"predicted: {name} ({probabilities[label]:.0%}); class-token attention, {heads}"
    return plot_attention(image, maps, box, title), maps
