"""The GPU checks (run by `bash scripts/gpu_check.sh`, or `pytest tests/gpu` on a CUDA machine).

Each test takes its device from the `device` fixture: CUDA when there is a GPU, else the device named by the
`CEIT_GPU_CHECK_DEVICE` variable (`scripts/gpu_check.sh --cpu` sets it to `cpu`, so CI runs the same code at tiny
sizes), else the test skips saying why. On a GPU the models are CeiT-T at 224 pixels (fewer blocks where a test
compiles); on the CPU a 32-pixel CeiT-T of one or two blocks.
"""

import os
import sys
from pathlib import Path

import pytest
import torch

from .helpers import DEVICE_VARIABLE


# `examples.segmentation` (a UperNet over CeiT) imports from the repository root, also under `pytest tests/gpu`.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


@pytest.fixture(scope="session")
def device() -> torch.device:
    wanted = os.environ.get(DEVICE_VARIABLE)
    if wanted:
        return torch.device(wanted)
    if torch.cuda.is_available():
        return torch.device("cuda")
    pytest.skip(f"needs CUDA (or {DEVICE_VARIABLE}=cpu, as `scripts/gpu_check.sh --cpu` sets, to run it on the CPU)")


@pytest.fixture(autouse=True)
def exact_float32():
    """TF32 off for the test (cuDNN convolutions default to it, which alone moves fp32 results by about 1e-3)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
