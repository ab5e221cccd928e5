"""CeiT vs transformers' DeiT of the same width, depth and heads, measured side by side in one process.

Variants: the plain CeiT (eager), `optimize_for_inference` (eager and `torch.compile`d), DeiT (eager and compiled).
Each round measures every (variant, measurement) once, variants alternating, so slow drifts of the machine (thermal,
other load) hit all alike; the reported figure is the median over rounds. Achieved GFLOP/s (matrix multiplications,
convolutions and attention, counted by `torch.utils.flop_counter`) are set against a matrix-multiply roof measured
in the same run. The engine of `scripts/benchmark.py`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from transformers import DeiTConfig, DeiTForImageClassification

from .configuration_ceit import CeiTConfig
from .inference import optimize_for_inference
from .modeling_ceit import CeiTForImageClassification


SIZES = {"tiny": ("ceit_tiny_patch16_224", 192, 3), "small": ("ceit_small_patch16_224", 384, 6)}
INFERENCE_VARIANTS = ("ceit", "ceit_optimized", "ceit_optimized_compiled", "deit", "deit_compiled")
TRAINING_VARIANTS = ("ceit", "deit")


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
        image_size=height if height == width else [height, width], patch_size=height // rows,
        num_channels=ceit_config.in_channels, hidden_size=ceit_config.d_model,
        num_hidden_layers=ceit_config.num_encoder_blocks + extra_blocks,
        num_attention_heads=ceit_config.encoder_num_heads,
        intermediate_size=ceit_config.d_model * ceit_config.leff_expand_ratio, hidden_act="gelu",
        hidden_dropout_prob=ceit_config.encoder_dropout,
        attention_probs_dropout_prob=ceit_config.encoder_attention_dropout, layer_norm_eps=ceit_config.layer_norm_eps,
        initializer_range=ceit_config.initializer_range, qkv_bias=ceit_config.qkv_bias,
        id2label=dict(ceit_config.id2label), label2id=dict(ceit_config.label2id),
    )


def build_pair(size: str) -> dict[str, torch.nn.Module]:
    """CeiT-`size` (official preset) and a DeiT of the same width/depth/heads, MLP ratio 4, 224 pixels, 1000 classes."""
    ceit = CeiTConfig.from_preset(SIZES[size][0])
    return {f"ceit_{size}": CeiTForImageClassification(ceit), f"deit_{size}": DeiTForImageClassification(deit_config_for(ceit))}


def build_variants(size: str, device: torch.device, compile: bool = True) -> dict[str, torch.nn.Module]:
    """The plain CeiT, its inference form (and compiled), DeiT (and compiled), on `device`, keyed by variant name."""
    models = build_pair(size)
    ceit, deit = models[f"ceit_{size}"].to(device), models[f"deit_{size}"].to(device)
    variants = {"ceit": ceit, "ceit_optimized": optimize_for_inference(ceit.eval()), "deit": deit}
    if compile:
        variants["ceit_optimized_compiled"] = torch.compile(variants["ceit_optimized"])
        variants["deit_compiled"] = torch.compile(deit)
    return variants


def matmul_roof(device: torch.device, dtype: torch.dtype, size: int = 2048, seconds: float = 1.0) -> float:
    """GFLOP/s of a large square matrix multiplication: the machine's practical limit for this dtype."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b
    _sync(device)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        calls += 1
    _sync(device)
    return 2 * size**3 * calls / (time.perf_counter() - start) / 1e9


def flops_per_image(model: torch.nn.Module, m: "Measurement", device: torch.device) -> float:
    """Forward FLOPs of one image counted by torch's FLOP counter (matrix multiplications, convolutions, attention);
    a training step counts 3x (the backward pass costs about twice the forward: torch's counter misprices the
    backward of grouped convolutions)."""
    step = _step_fn(model, None, Measurement(m.name, 2, False, m.dtype), device)
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops() / 2 * (3 if m.train else 1)


def _malloc_in_use():
    """Bytes currently allocated through glibc's malloc (small blocks + mmapped large ones), or None."""
    import ctypes
    import ctypes.util

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"
        )]

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallinfo2.restype = MallInfo2
    except (OSError, AttributeError):
        return None

    def in_use():
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd

    return in_use


class PeakMemory:
    """Peak memory allocated above the starting point during a block: CUDA's allocator statistics on a GPU;
    on the CPU, glibc's count of allocated bytes, sampled every 0.2 ms by a thread (so never around timings)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        self.in_use = _malloc_in_use()
        if self.in_use is not None:
            self.start = self.highest = self.in_use()
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.highest = max(self.highest, self.in_use())
            time.sleep(0.0002)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
        elif self.in_use is not None:
            self.running = False
            self.thread.join()
            self.peak = self.highest - self.start


@dataclass
class Measurement:
    name: str
    batch_size: int
    train: bool
    dtype: torch.dtype


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _step_fn(model, optimizer, m: "Measurement", device: torch.device):
    pixels = torch.randn(m.batch_size, 3, 224, 224, device=device)
    labels = torch.randint(0, 1000, (m.batch_size,), device=device)
    model.train(m.train)

    def step():
        if m.train:
            with _autocast(device, m.dtype):
                loss = model(pixel_values=pixels, labels=labels).loss
            loss.backward()
            if optimizer is not None:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode(), _autocast(device, m.dtype):
                model(pixel_values=pixels)

    return step


def time_once(model, optimizer, m: "Measurement", device: torch.device, iterations: int) -> float:
    """Images per second over `iterations` calls, after one untimed call."""
    step = _step_fn(model, optimizer, m, device)
    step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    _sync(device)
    return iterations * m.batch_size / (time.perf_counter() - start)


def peak_memory(model, optimizer, m: "Measurement", device: torch.device) -> int:
    """Peak memory of one call (after a warm-up call), in bytes."""
    step = _step_fn(model, optimizer, m, device)
    step()
    _sync(device)
    with PeakMemory(device) as memory:
        step()
    return memory.peak


def run_benchmark(
    sizes=("tiny", "small"),
    batch_sizes=(1, 32),
    train_batch_size: int = 32,
    rounds: int = 5,
    device: str = "cpu",
    dtypes=("float32",),
    min_seconds: float = 1.0,
    compile: bool = True,
    log=print,
) -> dict:
    device = torch.device(device)
    dtypes = [getattr(torch, d) for d in dtypes]
    results = {
        "machine": machine_description(device), "machine_info": machine_info(), "rounds": rounds, "models": {},
        "matmul_roof_gflops": {str(d)[6:]: matmul_roof(device, d) for d in dtypes},
    }
    for size in sizes:
        variants = build_variants(size, device, compile=compile)
        optimizers = {name: torch.optim.AdamW(variants[name].parameters(), lr=1e-4) for name in TRAINING_VARIANTS}
        measurements = [Measurement(f"infer_bs{b}_{str(d)[6:]}", b, False, d) for d in dtypes for b in batch_sizes]
        measurements += [Measurement(f"train_bs{train_batch_size}_{str(d)[6:]}", train_batch_size, True, d) for d in dtypes]
        runs = [(name, m) for m in measurements for name in (TRAINING_VARIANTS if m.train else variants) if name in variants]
        # iterations per measurement: enough for `min_seconds`, judged from one call of the slowest variant (the first
        # call of a compiled variant compiles it, outside any timing)
        iterations = {}
        for m in measurements:
            names = [name for name, each in runs if each is m]
            slowest = min(time_once(variants[n], optimizers.get(n), m, device, 1) for n in names)
            iterations[m.name] = max(1, round(min_seconds * slowest / m.batch_size))
        samples = {name: {} for name in variants}
        for r in range(rounds):
            for name, m in runs:
                seconds = time_once(variants[name], optimizers.get(name), m, device, iterations[m.name])
                samples[name].setdefault(m.name, []).append(seconds)
            log(f"[{size}] round {r + 1}/{rounds} done")
        for name, model in variants.items():
            measured = [m for n, m in runs if n == name]
            speed = {m.name: statistics.median(samples[name][m.name]) for m in measured}
            # counted on the eager module: the FLOP counter does not see inside compiled graphs
            flops = {m.name: flops_per_image(variants[name.removesuffix("_compiled")], m, device) for m in measured}
            results["models"][f"{name}_{size}"] = {
                "parameters": sum(p.numel() for p in model.parameters()),
                "images_per_second": speed,
                "all_rounds": samples[name],
                "gflops_per_image": {k: v / 1e9 for k, v in flops.items()},
                "achieved_gflops": {k: speed[k] * flops[k] / 1e9 for k in speed},
                "peak_memory_mib": {m.name: peak_memory(variants[name], optimizers.get(name), m, device) / 2**20
                                    for m in measured},
            }
        deit = results["models"][f"deit_{size}"]["images_per_second"]
        results.setdefault("ratios", {})[size] = {
            name: {k: v / deit[k] for k, v in results["models"][f"{name}_{size}"]["images_per_second"].items()}
            for name in variants
        }
        del variants, optimizers
    return results


def machine_info() -> dict:
    """The CPU (model name from /proc/cpuinfo where there is one), GPU, threads and library versions."""
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "device": "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "platform": platform.platform(),
    }


def machine_description(device: torch.device) -> str:
    info = machine_info()
    if device.type == "cuda":
        return f"{info['device'].removeprefix('cuda: ')}, torch {info['torch']}"
    return f"{info['cpu']}, {info['torch_threads']} threads, torch {info['torch']}"


def format_table(results: dict) -> str:
    """The results as a Markdown table: images/s, the ratio to eager DeiT of the same size, the share of the
    matrix-multiply roof each variant achieves, peak memory."""
    roofs = results["matmul_roof_gflops"]
    lines = [
        f"Machine: {results['machine']}; median of {results['rounds']} alternating rounds; matrix-multiply roof: "
        + ", ".join(f"{v:.0f} GFLOP/s ({k})" for k, v in roofs.items()),
        "",
        "| size | measurement | variant | img/s | vs DeiT eager | GFLOP/img | % of roof | peak MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size, ratios in results["ratios"].items():
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
    return "\n".join(lines)


def write_json(results: dict, path: str):
    with open(path, "w") as handle:
        json.dump(results, handle, indent=2)
