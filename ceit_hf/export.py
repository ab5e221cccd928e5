# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""ONNX export of a CeiT (or any image classifier) folder with the torch ONNX exporter (dynamo), dynamic batch,
checked against PyTorch with ONNX Runtime. The engine of `scripts/export_onnx.py`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForImageClassification

from .inference import optimize_if_ceit


def default_onnx_path(model_dir: str) -> Path:
    """`MODEL/onnx/model.onnx` (Optimum's layout of Hub repositories); ValueError for a Hub id, which has no folder."""
    if not Path(model_dir).is_dir():
        raise ValueError(f"{model_dir!r} is no local model folder: give the .onnx file to write (--output).")
    return Path(model_dir) / "onnx" / "model.onnx"


def export_onnx(
    model_dir: str,
    output: str | None = None,
    opset: int | None = None,
    check: bool = True,
    atol: float = 1e-4,
    trust_remote_code: bool = False,
) -> dict:
    """Exports `model_dir` to `output` (default: `default_onnx_path`), `pixel_values` (dynamic batch) -> `logits`.
    `check` runs it in ONNX Runtime and raises `ValueError` if its logits differ from PyTorch's by more than `atol`."""
    output = str(output or default_onnx_path(model_dir))
    model = AutoModelForImageClassification.from_pretrained(model_dir, trust_remote_code=trust_remote_code).eval()
    model = optimize_if_ceit(model)  # BatchNorm folded, the classification-only last block
    config = model.config
    height, width = config.image_hw if hasattr(config, "image_hw") else (config.image_size, config.image_size)
    program = torch.onnx.export(  # the output's only tensor (no labels, no loss) is the logits
        model,
        (torch.randn(2, config.num_channels, height, width),),
        dynamo=True,
        input_names=["pixel_values"],
        output_names=["logits"],
        dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch", min=1, max=4096)}},
        opset_version=opset,
        verbose=False,
    )
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    program.save(output)
    if not check:
        return {"output": output, "max_abs_difference": None}
    import onnxruntime

    session = onnxruntime.InferenceSession(output, providers=["CPUExecutionProvider"])
    difference = 0.0
    for size in (1, 3):
        pixels = torch.randn(size, config.num_channels, height, width)
        (actual,) = session.run(["logits"], {"pixel_values": pixels.numpy()})
        with torch.no_grad():
            difference = max(difference, float(np.abs(actual - model(pixels).logits.numpy()).max()))
    if difference > atol:
        raise ValueError(f"ONNX Runtime's logits differ from PyTorch's by {difference:.2e} > {atol:.0e}.")
    return {"output": output, "max_abs_difference": difference}
