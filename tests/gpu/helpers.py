"""What the GPU checks share: the device variable, tolerances, the models and batches, the error measure."""

import pytest
import torch

from ceit_hf import CeiTConfig, CeiTForImageClassification


DEVICE_VARIABLE = "CEIT_GPU_CHECK_DEVICE"
# ||a - b|| / ||b|| allowed between two computations of the same function (METHOD.md's ranges: fp32 arithmetic lands
# far under 1e-3, bf16 operands between 1e-3 and 1e-2): fp32 with TF32 off, and bf16 (its inputs, weights and
# activations rounded to 8 bits of mantissa) against the fp32 result.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2}
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """||value - reference|| / ||reference|| in fp64 (0 when both are zero, as the gradients of weights that do not
    reach the output); inf when `value` is not finite: NaN never passes."""
    value, reference = value.detach().double(), reference.detach().double()
    if not torch.isfinite(value).all():
        return float("inf")
    difference = (value - reference).norm().item()
    return difference / reference.norm().item() if difference else 0.0


def make_model(device: torch.device, blocks: int | None = None, **overrides) -> CeiTForImageClassification:
    """A randomly initialised CeiT-T with 10 classes on `device`: at 224 pixels on a GPU (all 12 blocks, or
    `blocks`), at 32 pixels with `blocks or 2` blocks on the CPU. No stochastic depth or dropout (the preset's)."""
    if device.type == "cpu":
        overrides = dict(image_size=32, num_encoder_blocks=blocks or 2, **overrides)
    elif blocks is not None:
        overrides = dict(num_encoder_blocks=blocks, **overrides)
    config = CeiTConfig.from_preset("ceit_tiny_patch16_224", num_labels=10, **overrides)
    return CeiTForImageClassification(config).to(device)


def make_batch(model: CeiTForImageClassification, batch: int, generator_seed: int = 0):
    """(pixels, labels) for `model` on its device, drawn fresh from a seeded CPU generator."""
    generator = torch.Generator().manual_seed(generator_seed)
    height, width = model.config.image_hw
    pixels = torch.randn(batch, 3, height, width, generator=generator)
    labels = torch.randint(0, model.config.num_labels, (batch,), generator=generator)
    device = next(model.parameters()).device
    return pixels.to(device), labels.to(device)
