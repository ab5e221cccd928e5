"""Other ways to run the parts of CeiT's training step that weigh most against DeiT's, measured against what the
model runs: `benchmarks/benchmark.py --levers`.

Each lever is one part of the step at CeiT-T's shapes (batch `batch_size`, 224x224 images: 196 tokens, LeFF width
768), forward and backward, in the model's form and in its alternatives; every form computes the same function
(checked before timing). Forms alternate within each round and the median over rounds is reported, with the ratio
to the model's form. A lever is worth taking into the model only where an alternative is clearly faster on the
device it would run on; the model itself stays as it is (its forward plain), whatever is measured here.

- depthwise: LeFF's 3x3 depthwise convolution on the token grid: channels-last (the model: a view of the tokens),
  channels-first (a copy), nine shifted multiply-adds of plain tensor ops.
- batchnorm_gelu: BatchNorm over the tokens' channels then GELU, as LeFF runs it twice: the modules (the model), and
  one autograd function of plain torch ops that keeps only its input and recomputes the rest in the backward pass.
- leff_stage: LeFF's local enhancement (BatchNorm-GELU-depthwise-BatchNorm-GELU) as a whole: stored activations,
  recomputed in the backward pass (`set_leff_recompute`), and compiled as one region (`torch.compile`).
- expand_batchnorm: LeFF's expansion, its BatchNorm and GELU: the modules (the model), and the BatchNorm folded into
  the expansion's weights (its batch statistics from the narrow input's covariance, `W cov(x) W^T`, so that no
  pass over the 4x-wide tensor normalises it, forward or backward).
- stem: the Image-to-Tokens convolution (7x7/2, 3 -> 64 channels, a weight gradient only): the convolution (the
  model), and im2col with one matrix product.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

from benchmarks.common import autocast, sync
from ceit_hf.configuration_ceit import CeiTConfig
from ceit_hf.modeling_ceit import CeiTLeFF


GRID = (14, 14)  # 224 / 16
FASTER = 0.95  # an alternative pays when it takes at most this share of the model's time
LEVERS = ("depthwise", "batchnorm_gelu", "expand_batchnorm", "leff_stage", "stem")


def _depthwise_shifted(grid: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A 3x3 depthwise convolution (padding 1) of a channels-last `(B, H, W, C)` grid as nine shifted products."""
    height, width = grid.shape[1:3]
    padded = F.pad(grid, (0, 0, 1, 1, 1, 1))
    taps = weight.reshape(weight.shape[0], 9)
    out = bias
    for row in range(3):
        for column in range(3):
            out = out + padded[:, row : row + height, column : column + width] * taps[:, 3 * row + column]
    return out


class _BatchNormGelu(torch.autograd.Function):
    """Training-mode BatchNorm over the rows of `x` (no running statistics) then GELU, saving only `x` and the
    statistics: the normalised values and GELU's input are recomputed in the backward pass."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        var, mean = torch.var_mean(x, dim=0, unbiased=False)
        inv_std = torch.rsqrt(var + eps)
        ctx.save_for_backward(x, weight, bias, mean, inv_std)
        return F.gelu(torch.addcmul(bias - mean * weight * inv_std, x, weight * inv_std))

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias, mean, inv_std = ctx.saved_tensors
        normalized = (x - mean) * inv_std
        pre = normalized * weight + bias
        cdf = 0.5 * (1.0 + torch.erf(pre / math.sqrt(2.0)))
        grad_pre = grad * (cdf + pre * torch.exp(-0.5 * pre * pre) / math.sqrt(2.0 * math.pi))
        grad_bias, grad_weight = grad_pre.sum(0), (grad_pre * normalized).sum(0)
        rows = x.shape[0]
        grad_x = weight * inv_std * (grad_pre - grad_bias / rows - normalized * grad_weight / rows)
        return grad_x, grad_weight, grad_bias, None


def _expand_folded(linear: torch.nn.Linear, norm: torch.nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """`norm(linear(x))` in training (batch statistics; running statistics left alone) as one Linear: the output's
    mean is `linear(mean(x))` and its variance the diagonal of `W cov(x) W^T`, so the normalisation folds into the
    weights and the bias (which the mean cancels)."""
    with torch.autocast(x.device.type, enabled=False):  # statistics in fp32, as BatchNorm keeps them under autocast
        rows = x.reshape(-1, x.shape[-1]).float()
        mean = rows.mean(0)
        centered = rows - mean
        variance = ((linear.weight @ (centered.T @ centered / rows.shape[0])) * linear.weight).sum(1)
        scale = norm.weight * torch.rsqrt(variance + norm.eps)
        bias = torch.addcmul(norm.bias, scale, linear.bias - F.linear(mean, linear.weight, linear.bias))
    return F.linear(x, linear.weight * scale[:, None], bias)


def _forms(lever: str, batch_size: int, device: torch.device) -> tuple[dict[str, Callable], Callable]:
    """({form name: forward of the lever's input}, a maker of that input), the model's form first."""
    config = CeiTConfig.from_preset("ceit_tiny_patch16_224")
    tokens = GRID[0] * GRID[1]
    hidden = config.leff_expand_ratio * config.d_model
    if lever == "depthwise":
        conv = torch.nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden).to(device)

        def on_grid(x):
            return x.view(batch_size, *GRID, hidden)

        forms = {
            "channels-last (model)": lambda x: conv(on_grid(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1),
            "channels-first copy": lambda x: conv(on_grid(x).permute(0, 3, 1, 2).contiguous()).permute(0, 2, 3, 1),
            "nine shifted multiply-adds": lambda x: _depthwise_shifted(on_grid(x), conv.weight, conv.bias),
        }
        return forms, lambda: torch.randn(batch_size, tokens, hidden, device=device, requires_grad=True)
    if lever == "batchnorm_gelu":
        norm = torch.nn.BatchNorm1d(hidden, track_running_stats=False).to(device)
        forms = {
            "BatchNorm1d + GELU modules (model)": lambda x: F.gelu(norm(x)),
            "autograd function, plain ops": lambda x: _BatchNormGelu.apply(x, norm.weight, norm.bias, norm.eps),
        }
        return forms, lambda: torch.randn(batch_size * tokens, hidden, device=device, requires_grad=True)
    if lever == "expand_batchnorm":
        linear = torch.nn.Linear(config.d_model, hidden).to(device)
        norm = torch.nn.BatchNorm1d(hidden, track_running_stats=False).to(device)
        forms = {
            "Linear + BatchNorm1d + GELU modules (model)": lambda x: F.gelu(norm(linear(x))),
            "BatchNorm folded into the Linear": lambda x: F.gelu(_expand_folded(linear, norm, x)),
        }
        return forms, lambda: torch.randn(batch_size * tokens, config.d_model, device=device, requires_grad=True)
    if lever == "leff_stage":
        stored = CeiTLeFF(config).to(device).train()
        stored.recompute_activations = False
        recomputed = copy.deepcopy(stored)
        recomputed.recompute_activations = True
        compiled = copy.deepcopy(stored)
        compiled.local_enhancement = torch.compile(compiled.local_enhancement, dynamic=False)
        forms = {
            "stored activations (model on GPUs)": lambda x: stored(x, GRID),
            "recomputed (model on CPUs)": lambda x: recomputed(x, GRID),
            "torch.compile of the region": lambda x: compiled(x, GRID),
        }
        return forms, lambda: torch.randn(batch_size, tokens + 1, config.d_model, device=device, requires_grad=True)
    if lever == "stem":
        conv = torch.nn.Conv2d(3, config.i2t_out_channels, 7, stride=2, padding=3, bias=False).to(device)
        size = 224

        def im2col(x):
            columns = F.unfold(x, 7, padding=3, stride=2)  # (B, 3 * 49, 112 * 112)
            out = conv.weight.reshape(conv.out_channels, -1) @ columns
            return out.view(x.shape[0], conv.out_channels, size // 2, size // 2)

        forms = {"convolution (model)": conv, "im2col + matrix product": im2col}
        return forms, lambda: torch.randn(batch_size, 3, size, size, device=device)
    raise ValueError(f"Unknown lever {lever!r}; expected one of {list(LEVERS)}.")


def _time(form: Callable, x: torch.Tensor, grad: torch.Tensor, device, dtype, seconds: float) -> float:
    """Milliseconds per forward + backward, over at least `seconds`."""
    calls, start = 0, time.perf_counter()
    while True:
        with autocast(device, dtype):
            out = form(x)
        out.backward(grad.to(out.dtype))
        calls += 1
        sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 1000 * elapsed / calls


def measure_levers(
    levers=LEVERS,
    batch_size: int = 32,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    rounds: int = 3,
    seconds: float = 1.0,
    log=print,
) -> dict:
    """{lever: {"ms": {form: median ms per forward + backward}, "ratio": {form: its time / the model's form's},
    "max_difference" and "max_input_grad_difference": {form: largest difference to the model's form's output and
    input gradient}}}."""
    device = torch.device(device)
    results = {}
    for lever in levers:
        torch.manual_seed(0)
        forms, make_input = _forms(lever, batch_size, device)
        x = make_input()
        outputs, input_grads = {}, {}
        for name, form in forms.items():
            with autocast(device, dtype):
                outputs[name] = form(x).float()
            if x.requires_grad:
                (input_grads[name],) = torch.autograd.grad(outputs[name].sum(), x)
        reference = next(iter(outputs.values()))
        grad = torch.randn_like(reference)
        for form in forms.values():  # warm-up: kernels chosen, compiled regions built
            _time(form, x, grad, device, dtype, 0.0)
        times = {name: [] for name in forms}
        for _ in range(rounds):
            for name, form in forms.items():
                times[name].append(_time(form, x, grad, device, dtype, seconds))
        ms = {name: statistics.median(values) for name, values in times.items()}
        model_ms = next(iter(ms.values()))
        results[lever] = {
            "ms": ms,
            "ratio": {name: value / model_ms for name, value in ms.items()},
            "max_difference": {name: (out - reference).abs().max().item() for name, out in outputs.items()},
            "max_input_grad_difference": {
                name: (value - next(iter(input_grads.values()))).abs().max().item()
                for name, value in input_grads.items()
            },
        }
        if log:
            log(f"[levers] {lever}: " + ", ".join(f"{name} {value:.1f} ms" for name, value in ms.items()))
    return results


def format_levers(levers: dict) -> list[str]:
    """The lever measurements as Markdown: one row per form, its time and ratio to the model's form."""
    lines = [
        "| part of the step | form | ms (forward + backward) | vs the model's form | pays (<= 0.95x) | max difference |",
        "|---|---|---|---|---|---|",
    ]
    for lever, entry in levers.items():
        for index, (name, ms) in enumerate(entry["ms"].items()):
            ratio = entry["ratio"][name]
            verdict = "-" if index == 0 else ("yes" if ratio <= FASTER else "no")
            difference = entry["max_difference"][name]
            lines.append(f"| {lever} | {name} | {ms:.1f} | {ratio:.2f}x | {verdict} | {difference:.1e} |")
    return lines


def format_levers_table(results: dict) -> str:
    """The levers part of a benchmark's results (`levers`, `levers_setup`) as Markdown, "" when there is none (the
    rest of the results: `benchmarking.format_table`)."""
    if "levers" not in results:
        return ""
    setup = results["levers_setup"]
    lines = [
        f"Machine: {setup['machine']}; {setup['dtype']}, batch {setup['batch_size']}, CeiT-T's shapes; median "
        f"of {setup['rounds']} alternating rounds.",
        "",
        *format_levers(results["levers"]),
    ]
    return "\n".join(lines)
