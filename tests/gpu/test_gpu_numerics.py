"""On the device: the attention implementations, `optimize_for_inference` and a compiled training step compute what
the plain eager model computes, in fp32 and bf16 (see conftest.py for the device and sizes)."""

import copy

import pytest
import torch
from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

from ceit_hf import optimize_for_inference

from .helpers import DTYPES, TOLERANCE, make_batch, make_model, relative_error


# Gradients of a compiled step against eager ones: fp32 reorders sums only; under bf16 autocast inductor keeps some
# intermediates in fp32 where eager rounds them to bf16, and the differences add up through the backward pass.
GRADIENT_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 1e-1}


def missing(implementation: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why `implementation` cannot run here (None when it can)."""
    if implementation == "flex_attention" and device.type == "cpu":
        # its kernel is compiled at the first call: about 25 s per dtype on a CPU (C++), a few seconds on a GPU
        return (
            "flex_attention compiles C++ kernels on the CPU (~25 s): checked on CUDA, and in fp32 by "
            "tests/models/test_modeling_ceit.py"
        )
    available = {"flash_attention_2": is_flash_attn_2_available, "flash_attention_3": is_flash_attn_3_available}
    if implementation not in available:
        return None
    if device.type != "cuda":
        return f"{implementation} runs on CUDA only"
    if not available[implementation]():
        return f"{implementation}: its package (flash_attn / flash_attn_3) is not installed"
    if dtype == torch.float32:
        return f"{implementation} computes in fp16/bf16 only"
    return None


@DTYPES
@pytest.mark.parametrize("implementation", ["sdpa", "flex_attention", "flash_attention_2", "flash_attention_3"])
def test_attention_implementation_matches_eager(device, implementation, dtype):
    if reason := missing(implementation, device, dtype):
        pytest.skip(reason)
    model = make_model(device).eval()
    pixels, _ = make_batch(model, 8)
    with torch.no_grad():
        model.set_attn_implementation("eager")
        reference = model(pixel_values=pixels).logits  # fp32 eager
        model.to(dtype)
        eager = model(pixel_values=pixels.to(dtype)).logits
        model.set_attn_implementation(implementation)
        assert model.config._attn_implementation == implementation
        logits = model(pixel_values=pixels.to(dtype)).logits
    assert logits.dtype == dtype
    # the same function as eager attention at this dtype, and within the dtype's rounding of the fp32 result
    assert relative_error(logits, eager) < TOLERANCE[dtype]
    assert relative_error(logits, reference) < TOLERANCE[dtype]


@DTYPES
def test_optimize_for_inference_matches_the_plain_model(device, dtype):
    model = make_model(device).eval()
    # BatchNorm statistics other than the initial 0/1, so that folding them into the weights is exercised
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    pixels, _ = make_batch(model, 8)
    with torch.no_grad():
        reference = model(pixel_values=pixels).logits
        optimized = optimize_for_inference(model.to(dtype))
        plain = model(pixel_values=pixels.to(dtype)).logits
        logits = optimized(pixel_values=pixels.to(dtype)).logits
    assert logits.dtype == dtype
    assert relative_error(logits, plain) < TOLERANCE[dtype]
    assert relative_error(logits, reference) < TOLERANCE[dtype]


@pytest.fixture(scope="module")
def compile_backend(device):
    """inductor on a GPU (what a training run compiles with); on the CPU aot_eager, the same graphs and autograd
    without inductor's C++ code generation, which takes minutes there."""
    return "inductor" if device.type == "cuda" else "aot_eager"


@DTYPES
def test_compiled_training_step_matches_eager(device, compile_backend, dtype):
    """One training step (forward, backward, AdamW) of the compiled model and of the eager one from the same weights:
    a finite loss, the same gradients, BatchNorm statistics and (fp32) updated weights. bf16 runs under autocast, as
    Trainer's --bf16 does."""
    torch.manual_seed(0)
    eager = make_model(device, blocks=2 if device.type == "cuda" else 1).train()
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, backend=compile_backend)
    pixels, labels = make_batch(eager, 16)
    results = []
    for module, forward in ((eager, eager), (model, compiled)):
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = forward(pixel_values=pixels, labels=labels).loss
        loss.backward()
        gradients = {name: p.grad.clone() for name, p in module.named_parameters()}
        optimizer.step()
        results.append((loss.detach(), gradients))
    (eager_loss, eager_gradients), (loss, gradients) = results
    assert torch.isfinite(loss)
    assert relative_error(loss, eager_loss) < TOLERANCE[dtype]
    errors = {name: relative_error(gradient, eager_gradients[name]) for name, gradient in gradients.items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] < GRADIENT_TOLERANCE[dtype], f"{worst}: {errors[worst]:.2e}"
    # After the step: the BatchNorm statistics, and in fp32 the weights. (Under bf16 a gradient element near zero can
    # differ in sign, which Adam's first step turns into +-lr: a zero-initialised bias can then differ by its size.)
    eager_state = eager.state_dict()
    state = model.state_dict() if dtype == torch.float32 else dict(model.named_buffers())
    for name, value in state.items():
        assert relative_error(value.float(), eager_state[name].float()) < TOLERANCE[dtype], name
