import logging
import logging.handlers
import os
import socket


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from ceit_hf import CeiTConfig  # noqa: E402


# The measurements (benchmarks/, beside the package and not installed) import as `benchmarks` from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hub_stand_in import fake_hub  # noqa: E402, F401 (the fixture of every test that uploads)


# Property-based tests (tests/models/test_properties.py): "ci" is the default, a few examples per property so the file runs
# in well under a minute; "long" explores the config space for real (HYPOTHESIS_PROFILE=long, about 5 minutes).
_PROFILE_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much]}
settings.register_profile("ci", max_examples=30, derandomize=True, print_blob=True, **_PROFILE_COMMON)
settings.register_profile("long", max_examples=2000, print_blob=True, **_PROFILE_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# Hub remote code: what a saved folder carries (tests/models/test_remote_code.py, tests/models/test_conversion.py).
CODE_FILES = ("configuration_ceit.py", "modeling_ceit.py", "image_processing_ceit.py")
IMAGE_PROCESSOR_MAP = {
    "torchvision": "image_processing_ceit.CeiTImageProcessor",
    "pil": "image_processing_ceit.CeiTImageProcessorPil",
}
MODEL_AUTO_MAP = {
    "AutoConfig": "configuration_ceit.CeiTConfig",
    "AutoModel": "modeling_ceit.CeiTModel",
    "AutoModelForImageClassification": "modeling_ceit.CeiTForImageClassification",
    "AutoBackbone": "modeling_ceit.CeiTBackbone",
}


TINY = {
    "image_size": 32,
    "d_model": 32,
    "encoder_num_heads": 2,
    "lca_encoder_num_heads": 2,
    "num_encoder_blocks": 2,
    "i2t_out_channels": 8,
    "patch_size": 2,
    "classifier_mlp_d": None,
    "num_classes": 5,
}


def tiny_config(**overrides) -> CeiTConfig:
    """A CeiT small enough for a test: 32x32 input -> 8x8 stem map -> 4x4 token grid, 2 blocks of width 32."""
    return CeiTConfig(**{**TINY, **overrides})


def assert_same_training_results(model, reference, atol: float = 1e-6) -> None:
    """After a backward pass each: `model`'s gradients and buffers (BatchNorm statistics) equal `reference`'s."""
    reference_params, reference_buffers = dict(reference.named_parameters()), dict(reference.named_buffers())
    for name, param in model.named_parameters():
        assert torch.allclose(param.grad, reference_params[name].grad, atol=atol), name
    for name, buffer in model.named_buffers():
        assert torch.allclose(buffer.float(), reference_buffers[name].float(), atol=atol), name


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def ceit_log() -> list[logging.LogRecord]:
    """The records `ceit_hf`'s loggers emit during the test (they do not propagate to pytest's caplog)."""
    handler = logging.handlers.BufferingHandler(capacity=100_000)
    logger = logging.getLogger("ceit_hf")
    logger.addHandler(handler)
    yield handler.buffer
    logger.removeHandler(handler)


def free_port() -> int:
    """A TCP port free on localhost now, for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
