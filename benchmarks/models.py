# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""CeiT vs transformers' DeiT of the same width, depth and heads, measured side by side in one process
(`benchmarks/benchmark.py`).

Variants: for inference the plain CeiT (eager), `optimize_for_inference` (eager and `torch.compile`d) and DeiT (eager
and compiled); for the training step (forward, backward, AdamW) CeiT and DeiT, each eager and compiled (the model
`torch.compile`d, the optimizer step eager). Each round measures every (variant, measurement) once, variants
alternating, so slow drifts of the machine (thermal, other load) hit all alike; the reported figure is the median
over rounds. Achieved GFLOP/s (matrix multiplications, convolutions and attention, counted by
`torch.utils.flop_counter`) are set against a matrix-multiply roof measured in the same run. Also the training step
by operator (`profile_training_step`)."""

from __future__ import annotations

import copy
import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import DeiTConfig, DeiTForImageClassification

from benchmarks.common import (
    PeakMemory,
    autocast,
    machine_description,
    machine_info,
    matmul_roof,
    sync,
)
from ceit_hf.configuration_ceit import CeiTConfig
from ceit_hf.inference import optimize_for_inference
from ceit_hf.modeling_ceit import CeiTForImageClassification


SIZES = {"tiny": ("ceit_tiny_patch16_224", 192, 3), "small": ("ceit_small_patch16_224", 384, 6)}


INFERENCE_VARIANTS = ("ceit", "ceit_optimized", "ceit_optimized_compiled", "deit", "deit_compiled")


TRAINING_VARIANTS = (
    "ceit",
    "ceit_compiled",
    "ceit_leff_recompute",
    "ceit_leff_stored",
    "ceit_stem_recompute",
    "ceit_stem_stored",
    "deit",
    "deit_compiled",
)


def deit_config_for(ceit_config, extra_blocks: int = 0) -> DeiTConfig:
    """A `DeiTConfig` sized like a CeiT: same width, heads, MLP ratio, LayerNorm eps, dropouts, initializer, classes
    and token grid (patch = image size / CeiT's grid), and CeiT's encoder blocks + `extra_blocks`."""
    height, width = ceit_config.image_hw
    rows, cols = ceit_config.token_grid_size(height, width)
    if height % rows or width % cols or height // rows != width // cols:
        raise ValueError(
            f"CeiT's {rows}x{cols} token grid on {height}x{width} images has no square DeiT patch size that matches it."
        )
    return DeiTConfig(
        image_size=height if height == width else [height, width],
        patch_size=height // rows,
        num_channels=ceit_config.in_channels,
        hidden_size=ceit_config.d_model,
        num_hidden_layers=ceit_config.num_encoder_blocks + extra_blocks,
        num_attention_heads=ceit_config.encoder_num_heads,
        intermediate_size=ceit_config.d_model * ceit_config.leff_expand_ratio,
        hidden_act="gelu",
        hidden_dropout_prob=ceit_config.encoder_dropout,
        attention_probs_dropout_prob=ceit_config.encoder_attention_dropout,
        layer_norm_eps=ceit_config.layer_norm_eps,
        initializer_range=ceit_config.initializer_range,
        qkv_bias=ceit_config.qkv_bias,
        id2label=dict(ceit_config.id2label),
        label2id=dict(ceit_config.label2id),
    )


def build_pair(size: str, **overrides) -> dict[str, torch.nn.Module]:
    """CeiT-`size` (official preset, 224 pixels, 1000 classes, with config `overrides` on top, e.g. a smaller
    `image_size` for a smoke run) and a DeiT of the same width/depth/heads, MLP ratio 4 and token grid."""
    ceit = CeiTConfig.from_preset(SIZES[size][0], **overrides)
    return {
        f"ceit_{size}": CeiTForImageClassification(ceit),
        f"deit_{size}": DeiTForImageClassification(deit_config_for(ceit)),
    }


def build_variants(
    size: str,
    device: torch.device,
    compile: bool = True,
    overrides: dict | None = None,
    compile_backend: str = "inductor",
) -> dict[str, torch.nn.Module]:
    """The plain CeiT, its inference form (and compiled), DeiT (and compiled), on `device`, keyed by variant name.
    `ceit_compiled` (the plain model compiled) is the training variant: the compiled inference form is
    `ceit_optimized_compiled`. A compiled variant shares its parameters with the eager one. The other choice of
    `set_leff_recompute` and of `set_stem_recompute` than the plain model's "auto" (which recomputes on the CPU only):
    `ceit_leff_recompute` and `ceit_stem_recompute` off the CPU, `ceit_leff_stored` and `ceit_stem_stored` on it."""
    models = build_pair(size, **(overrides or {}))
    ceit, deit = models[f"ceit_{size}"].to(device), models[f"deit_{size}"].to(device)
    optimized = optimize_for_inference(ceit.eval())
    variants = {"ceit": ceit, "ceit_compiled": ceit}
    recompute = device.type != "cpu"  # the other choice than "auto"'s
    for part in ("leff", "stem"):
        other = f"ceit_{part}_{'recompute' if recompute else 'stored'}"
        variants[other] = copy.deepcopy(ceit)
        getattr(variants[other], f"set_{part}_recompute")(recompute)
    variants.update(ceit_optimized=optimized, ceit_optimized_compiled=optimized, deit=deit, deit_compiled=deit)
    compiled = functools.partial(torch.compile, backend=compile_backend)
    return {
        name: compiled(model) if name.endswith("_compiled") else model
        for name, model in variants.items()
        if compile or not name.endswith("_compiled")
    }


def flops_per_image(model: torch.nn.Module, m: Measurement, device: torch.device) -> float:
    """Forward FLOPs of one image counted by torch's FLOP counter (matrix multiplications, convolutions, attention);
    a training step counts 3x (the backward pass costs about twice the forward: torch's counter misprices the
    backward of grouped convolutions)."""
    step = _step_fn(model, None, Measurement(m.name, 2, False, m.dtype, m.image_size, m.num_labels), device)
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops() / 2 * (3 if m.train else 1)


@dataclass
class Measurement:
    name: str
    batch_size: int
    train: bool
    dtype: torch.dtype
    image_size: tuple[int, int] = (224, 224)
    num_labels: int = 1000


def _step_fn(model, optimizer, m: Measurement, device: torch.device):
    pixels = torch.randn(m.batch_size, 3, *m.image_size, device=device)
    labels = torch.randint(0, m.num_labels, (m.batch_size,), device=device)
    model.train(m.train)

    def step():
        if m.train:
            with autocast(device, m.dtype):
                loss = model(pixel_values=pixels, labels=labels).loss
            loss.backward()
            if optimizer is not None:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode(), autocast(device, m.dtype):
                model(pixel_values=pixels)

    return step


def time_once(model, optimizer, m: Measurement, device: torch.device, iterations: int) -> float:
    """Images per second over `iterations` calls, after one untimed call."""
    step = _step_fn(model, optimizer, m, device)
    step()
    sync(device)
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    sync(device)
    return iterations * m.batch_size / (time.perf_counter() - start)


def peak_memory(model, optimizer, m: Measurement, device: torch.device) -> int:
    """Peak memory of one call (after a warm-up call), in bytes."""
    step = _step_fn(model, optimizer, m, device)
    step()
    sync(device)
    with PeakMemory(device) as memory:
        step()
    return memory.peak


def run_benchmark(  # noqa: C901 (the measurement loop in one place)
    sizes=("tiny", "small"),
    batch_sizes=(1, 32),
    train_batch_size: int = 32,
    rounds: int = 5,
    device: str = "cpu",
    dtypes=("float32",),
    min_seconds: float = 1.0,
    compile: bool = True,
    log=print,
    overrides: dict | None = None,
    compile_backend: str = "inductor",
    roof_size: int | None = None,
    roof_seconds: float = 1.0,
    checkpoint: Callable[[dict], None] | None = None,
) -> dict:
    """Every (variant, measurement) of each size in `sizes`, `rounds` alternating rounds (see the module docstring).
    `overrides` go to both models' configuration (`build_pair`); `checkpoint`, when given, is called with the results
    so far after each size (a caller that writes them keeps the finished sizes if a later one fails or is killed)."""
    device = torch.device(device)
    dtypes = [getattr(torch, d) for d in dtypes]
    # transformers' shared decorators (`can_return_tuple`, ...) are one code object for every model: each compiled
    # variant recompiles them, and dynamo's default limit (8) would leave the later ones running eagerly.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    results = {
        "machine": machine_description(device),
        "machine_info": machine_info(),
        "rounds": rounds,
        "models": {},
        "matmul_roof_gflops": {str(d)[6:]: matmul_roof(device, d, roof_size, roof_seconds) for d in dtypes},
    }
    if overrides:
        results["config_overrides"] = dict(overrides)
    for size in sizes:
        variants = build_variants(size, device, compile=compile, overrides=overrides, compile_backend=compile_backend)
        config = variants["ceit"].config
        shape = {"image_size": config.image_hw, "num_labels": config.num_labels}
        optimizers = {
            name: torch.optim.AdamW(variants[name].parameters(), lr=1e-4)
            for name in TRAINING_VARIANTS
            if name in variants
        }
        measurements = [
            Measurement(f"infer_bs{b}_{str(d)[6:]}", b, False, d, **shape) for d in dtypes for b in batch_sizes
        ]
        measurements += [
            Measurement(f"train_bs{train_batch_size}_{str(d)[6:]}", train_batch_size, True, d, **shape) for d in dtypes
        ]
        runs = [
            (name, m)
            for m in measurements
            for name in (TRAINING_VARIANTS if m.train else INFERENCE_VARIANTS)
            if name in variants
        ]
        # iterations per measurement: enough for `min_seconds`, judged from one call of the slowest variant (the first
        # call of a compiled variant compiles it, outside any timing). A variant that fails there (a compiler error,
        # say) is left out of the measurement and its error reported; the eager models must work.
        iterations = {}
        for m in measurements:
            speeds = []
            for name in [name for name, each in runs if each is m]:
                try:
                    speeds.append(time_once(variants[name], optimizers.get(name), m, device, 1))
                except Exception as error:
                    if name in ("ceit", "deit"):
                        raise
                    message = f"{type(error).__name__}: {error}"[:1000]
                    results.setdefault("errors", {})[f"{name}_{size}/{m.name}"] = message
                    log(f"[{size}] {name} {m.name} failed, left out: {message}")
                    runs.remove((name, m))
            iterations[m.name] = max(1, round(min_seconds * min(speeds) / m.batch_size))
        samples = {name: {} for name in variants}
        for r in range(rounds):
            for name, m in runs:
                seconds = time_once(variants[name], optimizers.get(name), m, device, iterations[m.name])
                samples[name].setdefault(m.name, []).append(seconds)
            log(f"[{size}] round {r + 1}/{rounds} done")
        for name, model in variants.items():
            measured = [m for n, m in runs if n == name]
            if not measured:
                continue
            speed = {m.name: statistics.median(samples[name][m.name]) for m in measured}
            # counted on the eager module: the FLOP counter does not see inside compiled graphs
            flops = {m.name: flops_per_image(variants[name.removesuffix("_compiled")], m, device) for m in measured}
            results["models"][f"{name}_{size}"] = {
                "parameters": sum(p.numel() for p in model.parameters()),
                "images_per_second": speed,
                "all_rounds": samples[name],
                "gflops_per_image": {k: v / 1e9 for k, v in flops.items()},
                "achieved_gflops": {k: speed[k] * flops[k] / 1e9 for k in speed},
                "peak_memory_mib": {
                    m.name: peak_memory(variants[name], optimizers.get(name), m, device) / 2**20 for m in measured
                },
            }
        deit = results["models"][f"deit_{size}"]["images_per_second"]
        results.setdefault("ratios", {})[size] = {
            name: {k: v / deit[k] for k, v in results["models"][f"{name}_{size}"]["images_per_second"].items()}
            for name in variants
            if f"{name}_{size}" in results["models"]
        }
        del variants, optimizers
        if checkpoint is not None:
            checkpoint(results)
    return results


def profile_training_step(
    size: str = "tiny",
    batch_size: int = 32,
    steps: int = 2,
    device="cpu",
    overrides: dict | None = None,
    top: int = 12,
) -> dict:
    """Where each model's training step (forward, backward, AdamW) spends its time, by operator: torch.profiler over
    `steps` steps after two warm-up steps, each operator's own time (not its children's) per step. {model: {"step_ms":
    the sum, "ops": {operator: {"ms", "calls"} per step, the `top` largest}}}."""
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    results = {}
    for name, model in build_pair(size, **(overrides or {})).items():
        model.to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        image_size = CeiTConfig.from_preset(SIZES[size][0], **(overrides or {})).image_hw
        step = _step_fn(model, optimizer, Measurement("train", batch_size, True, torch.float32, image_size), device)
        for _ in range(2):
            step()
        sync(device)
        with profile(activities=activities) as profiler:
            for _ in range(steps):
                step()
            sync(device)
        time_of = (lambda e: e.self_device_time_total) if device.type == "cuda" else (lambda e: e.self_cpu_time_total)
        events = [e for e in profiler.key_averages() if e.key.startswith("aten::")]
        events.sort(key=time_of, reverse=True)
        results[name] = {
            "step_ms": sum(time_of(e) for e in events) / steps / 1000,
            "ops": {e.key: {"ms": time_of(e) / steps / 1000, "calls": e.count // steps} for e in events[:top]},
        }
        model.to("cpu")
    return results


def format_profile(profile: dict) -> list[str]:
    """The profiles side by side: one row per operator (the union of each model's largest), ms per step and calls."""
    names = list(profile)
    ops = list(dict.fromkeys(op for name in names for op in profile[name]["ops"]))
    header = " | ".join(f"{name} ms (calls)" for name in names)
    lines = [f"| operator | {header} |", "|---|" + "---|" * len(names)]
    for op in sorted(ops, key=lambda op: -max(profile[n]["ops"].get(op, {"ms": 0})["ms"] for n in names)):
        cells = []
        for name in names:
            entry = profile[name]["ops"].get(op)
            cells.append(f"{entry['ms']:.1f} ({entry['calls']})" if entry else "-")
        lines.append(f"| {op} | {' | '.join(cells)} |")
    totals = " | ".join(f"**{profile[name]['step_ms']:.0f}**" for name in names)
    lines.append(f"| all aten operators | {totals} |")
    return lines


def format_table(results: dict) -> str:
    """The models' results as Markdown: per model, images/s, the ratio to eager DeiT of the same size, the share of
    the matrix-multiply roof each variant achieves, peak memory; then the profile, when measured."""
    lines = []
    if results.get("ratios"):
        roofs = results["matmul_roof_gflops"]
        kept = {True: "; freed CPU memory kept (glibc's heap)", False: "; glibc's default allocation"}
        lines += [
            f"Machine: {results['machine']}; median of {results['rounds']} alternating rounds; matrix-multiply roof: "
            + ", ".join(f"{v:.0f} GFLOP/s ({k})" for k, v in roofs.items())
            + kept.get(results.get("cpu_memory_kept"), ""),
            "",
            "| size | measurement | variant | img/s | vs DeiT eager | GFLOP/img | % of roof | peak MiB |",
            "|---|---|---|---|---|---|---|---|",
        ]
    for size, ratios in results.get("ratios", {}).items():
        keys = list(results["models"][f"deit_{size}"]["images_per_second"])
        for key in keys:
            for name in ratios:
                model = results["models"][f"{name}_{size}"]
                if key not in model["images_per_second"]:
                    continue
                roof = roofs[key.rsplit("_", 1)[1]]
                lines.append(
                    f"| {size} | {key} | {name} | {model['images_per_second'][key]:.1f} | {ratios[name][key]:.2f}x | "
                    f"{model['gflops_per_image'][key]:.2f} | {100 * model['achieved_gflops'][key] / roof:.0f}% | "
                    f"{model['peak_memory_mib'][key]:.0f} |"
                )
    if "profile" in results:
        setup = results["profile_setup"]
        lines += [
            *([""] if lines else []),
            f"Machine: {setup['machine']}; training step (forward, backward, AdamW), fp32, batch "
            f"{setup['batch_size']}; each operator's own time per step (torch.profiler, {setup['steps']} steps)"
            + (
                f"; matrix-multiply roof {setup['matmul_roof_gflops']:.0f} GFLOP/s, copy of a 4x-wide LeFF tensor "
                f"{setup['stream_gb_per_s']:.0f} GB/s (read + write)"
                if "stream_gb_per_s" in setup
                else ""
            )
            + ".",
            "",
            *format_profile(results["profile"]),
        ]
    return "\n".join(lines)
