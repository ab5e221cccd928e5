"""CeiT vs transformers' DeiT of the same width, depth and heads, measured side by side in one process.

Variants: for inference the plain CeiT (eager), `optimize_for_inference` (eager and `torch.compile`d) and DeiT (eager
and compiled); for the training step (forward, backward, AdamW) CeiT and DeiT, each eager and compiled (the model
`torch.compile`d, the optimizer step eager). Each round measures every (variant, measurement) once, variants
alternating, so slow drifts of the machine (thermal, other load) hit all alike; the reported figure is the median
over rounds. Achieved GFLOP/s (matrix multiplications, convolutions and attention, counted by
`torch.utils.flop_counter`) are set against a matrix-multiply roof measured in the same run.

`data_loader_throughput` measures the other side of a training run: how many images per second one data-loader
worker process decodes and augments with the training pipeline of `ceit_hf.data` (the DeiT recipe).
`startup_benchmark` measures what an image folder adds to the start of `scripts/train.py` (`--startup`).

The engine of `scripts/benchmark.py`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import DeiTConfig, DeiTForImageClassification

from .configuration_ceit import CeiTConfig
from .cpu_memory import glibc
from .inference import optimize_for_inference
from .modeling_ceit import CeiTForImageClassification


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


def matmul_roof(device: torch.device, dtype: torch.dtype, size: int | None = None, seconds: float = 1.0) -> float:
    """GFLOP/s of a large square matrix multiplication: the machine's practical limit for this dtype. The default
    size is 2048 on a CPU and 8192 on a GPU (a 2048^3 product is too short to fill an H100/H200)."""
    size = size or (8192 if device.type == "cuda" else 2048)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    return 2 * size**3 * _calls_per_second(lambda: a @ b, device, seconds) / 1e9


def _calls_per_second(work: Callable[[], object], device: torch.device, seconds: float) -> float:
    """How many times a second `work` runs, over at least `seconds` after one untimed call."""
    work()
    _sync(device)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        work()
        calls += 1
    _sync(device)
    return calls / (time.perf_counter() - start)


def stream_bandwidth(device: torch.device, shape=(32 * 196, 768), seconds: float = 1.0) -> float:
    """GB/s of a copy between two tensors of `shape` (default: LeFF's 4x-wide activations of CeiT-T at batch 32),
    counting one read and one write: what one pass of an elementwise operator over such a tensor can reach here."""
    source, target = torch.randn(shape, device=device), torch.empty(shape, device=device)
    return 2 * source.nbytes * _calls_per_second(lambda: target.copy_(source), device, seconds) / 1e9


def flops_per_image(model: torch.nn.Module, m: Measurement, device: torch.device) -> float:
    """Forward FLOPs of one image counted by torch's FLOP counter (matrix multiplications, convolutions, attention);
    a training step counts 3x (the backward pass costs about twice the forward: torch's counter misprices the
    backward of grouped convolutions)."""
    step = _step_fn(model, None, Measurement(m.name, 2, False, m.dtype, m.image_size, m.num_labels), device)
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops() / 2 * (3 if m.train else 1)


def _malloc_in_use():
    """Bytes currently allocated through glibc's malloc (small blocks + mmapped large ones), or None."""
    libc = glibc()
    if libc is None:
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
    image_size: tuple[int, int] = (224, 224)
    num_labels: int = 1000


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _step_fn(model, optimizer, m: Measurement, device: torch.device):
    pixels = torch.randn(m.batch_size, 3, *m.image_size, device=device)
    labels = torch.randint(0, m.num_labels, (m.batch_size,), device=device)
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


def time_once(model, optimizer, m: Measurement, device: torch.device, iterations: int) -> float:
    """Images per second over `iterations` calls, after one untimed call."""
    step = _step_fn(model, optimizer, m, device)
    step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    _sync(device)
    return iterations * m.batch_size / (time.perf_counter() - start)


def peak_memory(model, optimizer, m: Measurement, device: torch.device) -> int:
    """Peak memory of one call (after a warm-up call), in bytes."""
    step = _step_fn(model, optimizer, m, device)
    step()
    _sync(device)
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


# ------------------------------------------------------------------------------------------- data-loader throughput

# ImageNet-1k's training images average about 400x350 pixels and 110 KB as JPEG; 500x375 is its most common size.
IMAGENET_LIKE_SIZE = (500, 375)


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
        _sync(device)
        with profile(activities=activities) as profiler:
            for _ in range(steps):
                step()
            _sync(device)
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


def synthetic_jpegs(count: int, size: tuple[int, int] = IMAGENET_LIKE_SIZE, quality: int = 93, seed: int = 0):
    """`count` JPEG files (bytes) of `size` (width, height), encoded once in memory. Smooth random colour fields with
    fine noise, about 105 KiB each at 500x375: they compress and decode like photographs (pure noise would be several
    times the bytes and slower to decode, flat images far faster)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size
    files = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (height // 12 + 2, width // 12 + 2, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32)
        pixels = np.clip(smooth + rng.normal(0.0, 12.0, smooth.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
        files.append(buffer.getvalue())
    return files


def training_pipeline_dataset(jpegs: list[bytes], image_size: int = 224, seed: int = 0):
    """`jpegs` as the training job sees its data under `--recipe deit`: a `datasets` image column decoded on access,
    and the official recipe's worker side (`train_transform`: bicubic RandomResizedCrop to
    `image_size`, flip, RandAugment rand-m9-mstd0.5-inc1, uint8 out) through `SeededAugmentation` and
    `with_transform`. Normalisation, random erasing and Mixup/CutMix run on the training process's batch, not in
    the loader."""
    import datasets

    from .data.decoding import with_transform
    from .data.transforms import OFFICIAL_AUTO_AUGMENT, SeededAugmentation, train_transform

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=1000)})
    dataset = datasets.Dataset.from_dict(
        {"image": [{"bytes": data, "path": None} for data in jpegs], "label": [i % 1000 for i in range(len(jpegs))]},
        features=features,
    )
    transform = train_transform(image_size, auto_augment=OFFICIAL_AUTO_AUGMENT)
    return with_transform(dataset, "image", "label", SeededAugmentation(transform, seed))


def available_cpus() -> int:
    """The CPUs this process may run on (the affinity mask where there is one, which a container may narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def loader_images_per_second(dataset, workers: int, batch_size: int, seconds: float) -> float:
    """Images per second that a `DataLoader` with `workers` worker processes delivers from `dataset` (batches of
    `batch_size`, random order with replacement, `default_data_collator` as Trainer uses). Timed after the first
    3 x `workers` batches: the workers' start and the batches they prefetch meanwhile stay out of the figure."""
    from torch.utils.data import DataLoader, RandomSampler
    from transformers import default_data_collator

    sampler = RandomSampler(dataset, replacement=True, num_samples=2**31 - 1)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=default_data_collator,
        prefetch_factor=2 if workers else None,
    )
    batches = iter(loader)
    try:
        for _ in range(3 * max(workers, 1)):
            next(batches)
        images, start = 0, time.perf_counter()
        while images == 0 or time.perf_counter() - start < seconds:
            images += len(next(batches)["labels"])
        return images / (time.perf_counter() - start)
    finally:
        del batches  # shuts the workers down


def data_loader_throughput(
    workers=(1, None),
    images: int = 64,
    batch_size: int = 32,
    seconds: float = 5.0,
    image_size: int = 224,
    source_size: tuple[int, int] = IMAGENET_LIKE_SIZE,
    log=print,
) -> dict:
    """The training pipeline's throughput (decode + DeiT-recipe augmentation of synthetic ImageNet-like JPEGs) with
    each worker count in `workers` (None: every available CPU), as images/s in all and per worker. A GPU training at
    X images/s needs about X / `per_worker_images_per_second` workers (one CPU core each)."""
    jpegs = synthetic_jpegs(images, source_size)
    dataset = training_pipeline_dataset(jpegs, image_size)
    counts = list(dict.fromkeys(w or available_cpus() for w in workers))
    runs = {}
    for count in counts:
        rate = loader_images_per_second(dataset, count, batch_size, seconds)
        runs[str(count)] = {"images_per_second": rate, "per_worker_images_per_second": rate / count}
        log(f"[data loader] {count} worker(s): {rate:.0f} images/s, {rate / count:.0f} per worker")
    return {
        "source_size": list(source_size),
        "jpeg_kib_mean": sum(map(len, jpegs)) / len(jpegs) / 1024,
        "image_size": image_size,
        "batch_size": batch_size,
        "distinct_images": len(jpegs),
        "cpus": available_cpus(),
        "pipeline": "datasets Image decode + train_transform(rand-m9-mstd0.5-inc1, uint8) per example",
        "workers": runs,
        # the lowest per-worker rate: with many workers they share memory bandwidth and caches
        "per_worker_images_per_second": min(run["per_worker_images_per_second"] for run in runs.values()),
    }


# ------------------------------------------------------------------------------------------------- start-up
#
# `startup_benchmark` measures what an image folder adds to the start of `scripts/train.py --train_dir F`: the time
# from launching it to its first training step (the first loss line) and the peak resident memory of the process
# until then, on a folder of N tiny JPEGs in K class folders and on a folder of `baseline` images, each with a new
# index cache (first run) and again with it (second run); beside them the time torchvision's `ImageFolder` and
# `datasets.load_dataset("imagefolder")` take to index the same folder.

STARTUP_FLAGS = (
    "--max_steps 1 --logging_steps 1 --eval_strategy no --save_strategy no --per_device_train_batch_size 8 "
    "--dataloader_num_workers 0 --disable_tqdm true --report_to none"
).split()


def write_image_folder(folder, images: int, classes: int, size: int = 16):
    """`images` copies of one `size` x `size` JPEG spread over `classes` class folders of `folder` (reused when a
    previous call wrote the same: a marker file records it)."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    folder = Path(folder)
    marker = folder / ".ceit_hf_startup.json"
    wanted = {"images": images, "classes": classes, "size": size}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return folder
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    jpeg = buffer.getvalue()
    for label in range(classes):
        (folder / f"class_{label:04d}").mkdir(parents=True, exist_ok=True)
    for index in range(images):
        (folder / f"class_{index % classes:04d}" / f"{index:08d}.jpg").write_bytes(jpeg)
    marker.write_text(json.dumps(wanted))
    return folder


def peak_rss_mib(pid: int) -> float | None:
    """The peak resident memory of process `pid` so far (Linux' VmHWM), or None where /proc does not tell."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def time_to_first_step(command: list[str], timeout: float = 3600.0, env: dict | None = None) -> dict:
    """Runs `command` until it prints its first training loss (Trainer's `{'loss': ...}` line), then stops it:
    the seconds from launch to that line and the process's peak resident memory until then (MiB)."""
    import signal
    import subprocess

    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    start = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment, start_new_session=True
    )
    timer = threading.Timer(timeout, lambda: os.killpg(process.pid, signal.SIGKILL))
    timer.start()
    output = []
    try:
        for line in process.stdout:
            if "'loss'" in line:
                seconds = time.perf_counter() - start
                return {"seconds": seconds, "peak_rss_mib": peak_rss_mib(process.pid)}
            output.append(line)
        raise RuntimeError(f"{command[:3]} ended without a training step:\n{''.join(output[-30:])}")
    finally:
        timer.cancel()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        process.stdout.close()


def train_startup(folder, cache_dir, output_dir) -> dict:
    """`scripts/train.py --train_dir folder` to its first step, run twice with the index cache `cache_dir` (new
    the first time)."""
    import shutil
    import sys
    from pathlib import Path

    shutil.rmtree(cache_dir, ignore_errors=True)
    script = Path(__file__).resolve().parents[1] / "scripts" / "train.py"
    command = [sys.executable, str(script), "--train_dir", str(folder), "--output_dir", str(output_dir)]
    command += ["--cache_dir", str(cache_dir), *STARTUP_FLAGS]
    return {"first_run": time_to_first_step(command), "second_run": time_to_first_step(command)}


def startup_benchmark(
    images=(10_000,), classes: int = 10, baseline: int = 200, root="startup_images", imagefolder=True, log=print
) -> dict:
    """For each count in `images` (and for `baseline` images): train.py's time to its first step and peak memory,
    first and second run (`train_startup`), what the folder adds to the baseline's start, and the indexing time of
    torchvision's `ImageFolder` and (unless `imagefolder` is False) of `datasets.load_dataset("imagefolder")`."""
    import shutil
    import tempfile
    from pathlib import Path

    from torchvision.datasets import ImageFolder

    root = Path(root)
    work = Path(tempfile.mkdtemp(prefix="startup-"))
    try:
        base_folder = write_image_folder(root / f"{baseline}_{classes}", baseline, classes)
        base = train_startup(base_folder, work / "cache", work / "out")
        log(f"[start-up] {baseline} images: {base['first_run']['seconds']:.1f} s to the first step")
        results = {"classes": classes, "baseline": {"images": baseline, **base}, "folders": {}}
        for count in images:
            folder = write_image_folder(root / f"{count}_{classes}", count, classes)
            tick = time.perf_counter()
            ImageFolder(str(folder))
            entry = {"torchvision_index_seconds": time.perf_counter() - tick}
            if imagefolder:
                import datasets

                tick = time.perf_counter()
                datasets.load_dataset("imagefolder", data_dir=str(folder), cache_dir=str(work / "hf"), split="train")
                entry["load_dataset_imagefolder_seconds"] = time.perf_counter() - tick
                shutil.rmtree(work / "hf", ignore_errors=True)
            entry.update(train_startup(folder, work / "cache", work / "out"))
            for run in ("first_run", "second_run"):
                entry[run]["added_seconds"] = entry[run]["seconds"] - base[run]["seconds"]
            entry["target_added_seconds"] = 10 * entry["torchvision_index_seconds"]
            results["folders"][str(count)] = entry
            log(
                f"[start-up] {count} images: first step after {entry['first_run']['seconds']:.1f} s (first run), "
                f"{entry['second_run']['seconds']:.1f} s (second run); torchvision indexes it in "
                f"{entry['torchvision_index_seconds']:.2f} s"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def format_startup(startup: dict) -> list[str]:
    """The start-up measurement as Markdown: one row per folder size."""
    base = startup["baseline"]
    lines = [
        f"Start-up of train.py --train_dir on tiny JPEGs in {startup['classes']} class folders; added = over a "
        f"folder of {base['images']} images ({base['first_run']['seconds']:.1f} s / {base['second_run']['seconds']:.1f} s "
        "to its first step, first / second run); target: added <= 10x torchvision's indexing time.",
        "",
        '| images | torchvision ImageFolder s | load_dataset("imagefolder") s | first run: s to step 1 (added) | '
        "second run: s (added) | peak RSS MiB (1st / 2nd) | target met (1st / 2nd) |",
        "|---|---|---|---|---|---|---|",
    ]
    for count, entry in startup["folders"].items():
        first, second, target = entry["first_run"], entry["second_run"], entry["target_added_seconds"]
        imagefolder = entry.get("load_dataset_imagefolder_seconds")
        lines.append(
            f"| {int(count):,} | {entry['torchvision_index_seconds']:.2f} | "
            f"{'skipped' if imagefolder is None else f'{imagefolder:.1f}'} | "
            f"{first['seconds']:.1f} ({first['added_seconds']:+.1f}) | {second['seconds']:.1f} "
            f"({second['added_seconds']:+.1f}) | {first['peak_rss_mib'] or 0:.0f} / {second['peak_rss_mib'] or 0:.0f} | "
            f"{'yes' if first['added_seconds'] <= target else 'no'} / {'yes' if second['added_seconds'] <= target else 'no'} |"
        )
    return lines


def machine_info() -> dict:
    """The CPU (model name from /proc/cpuinfo where there is one), GPU, threads and library versions."""
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
    }


def machine_description(device: torch.device) -> str:
    info = machine_info()
    if device.type == "cuda":
        return f"{info['device'].removeprefix('cuda: ')}, torch {info['torch']}"
    return f"{info['cpu']}, {info['torch_threads']} threads, torch {info['torch']}"


def format_table(results: dict) -> str:
    """The results as Markdown: per model, images/s, the ratio to eager DeiT of the same size, the share of the
    matrix-multiply roof each variant achieves, peak memory; then the data-loader throughput, when measured."""
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
    if "data_loader" in results:
        lines += ([""] if lines else []) + format_data_loader(results["data_loader"])
    if "startup" in results:
        lines += ([""] if lines else []) + format_startup(results["startup"])
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


def format_data_loader(loader: dict) -> list[str]:
    """The data-loader measurement as Markdown lines: a sentence and one table row per worker count."""
    width, height = loader["source_size"]
    lines = [
        f"Data loader ({loader['pipeline']}): {width}x{height} JPEGs of {loader['jpeg_kib_mean']:.0f} KiB to "
        f"{loader['image_size']}x{loader['image_size']}, batch {loader['batch_size']}, {loader['cpus']} CPUs; "
        f"{loader['per_worker_images_per_second']:.0f} images/s per worker: a training at X images/s needs about "
        f"X / {loader['per_worker_images_per_second']:.0f} workers.",
        "",
        "| workers | images/s | per worker |",
        "|---|---|---|",
    ]
    for count, run in loader["workers"].items():
        lines.append(f"| {count} | {run['images_per_second']:.0f} | {run['per_worker_images_per_second']:.0f} |")
    return lines


def write_json(results: dict, path: str):
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)
