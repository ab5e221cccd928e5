# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""What every benchmark here shares: timing (a call rate, device sync, autocast), the machine's roofs (a matrix
multiply, a copy's bandwidth), peak memory (glibc's counters on the CPU, CUDA's on a GPU), the machine's description,
and writing results."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import threading
import time
from collections.abc import Callable

import torch

from ceit_hf.cpu_memory import glibc


def matmul_roof(device: torch.device, dtype: torch.dtype, size: int | None = None, seconds: float = 1.0) -> float:
    """GFLOP/s of a large square matrix multiplication: the machine's practical limit for this dtype. The default
    size is 2048 on a CPU and 8192 on a GPU (a 2048^3 product is too short to fill an H100/H200)."""
    size = size or (8192 if device.type == "cuda" else 2048)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    return 2 * size**3 * calls_per_second(lambda: a @ b, device, seconds) / 1e9


def calls_per_second(work: Callable[[], object], device: torch.device, seconds: float) -> float:
    """How many times a second `work` runs, over at least `seconds` after one untimed call."""
    work()
    sync(device)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        work()
        calls += 1
    sync(device)
    return calls / (time.perf_counter() - start)


def stream_bandwidth(device: torch.device, shape=(32 * 196, 768), seconds: float = 1.0) -> float:
    """GB/s of a copy between two tensors of `shape` (default: LeFF's 4x-wide activations of CeiT-T at batch 32),
    counting one read and one write: what one pass of an elementwise operator over such a tensor can reach here."""
    source, target = torch.randn(shape, device=device), torch.empty(shape, device=device)
    return 2 * source.nbytes * calls_per_second(lambda: target.copy_(source), device, seconds) / 1e9


def malloc_in_use():
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
        self.in_use = malloc_in_use()
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


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def available_cpus() -> int:
    """The CPUs this process may run on (the affinity mask where there is one, which a container may narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


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


def write_json(results: dict, path: str):
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)
