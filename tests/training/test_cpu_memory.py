"""`ceit_hf.cpu_memory.keep_freed_cpu_memory` and train.py's `--keep_freed_cpu_memory`."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ceit_hf import cpu_memory
from ceit_hf.cpu_memory import glibc


# Fills a 64 MiB tensor (above glibc's largest mmap threshold) and frees it; prints whether glibc mmapped it and how
# much resident memory the free gave back (MiB). First with glibc's
# defaults, then with freed memory kept. Loads ceit_hf/cpu_memory.py alone (without transformers' import time).
PROBE = """
import importlib.util, sys, torch
spec = importlib.util.spec_from_file_location("cpu_memory", sys.argv[1])
cpu_memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cpu_memory)
libc = cpu_memory.glibc()
def resident():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024
def round():
    before = resident()  # read first: the read's buffer is freed before the block comes
    block = torch.ones(64 << 20, dtype=torch.uint8)
    mapped = libc.mallinfo2().hblkhd >= 64 << 20
    del block
    print(mapped, before + 64 - resident())
round()
assert cpu_memory.keep_freed_cpu_memory()
round()
"""


@pytest.mark.skipif(glibc() is None, reason="glibc's allocator only")
def test_large_blocks_come_from_the_heap_and_stay_there():
    """glibc's defaults map a 64 MiB block on its own and give it back to the kernel on free (the next one is faulted
    in afresh); kept, it comes from the heap and its memory stays in the process for the next block."""
    module = Path(cpu_memory.__file__)
    out = subprocess.run([sys.executable, "-c", PROBE, str(module)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    (system_mapped, system_returned), (kept_mapped, kept_returned) = (line.split() for line in out.stdout.splitlines())
    assert system_mapped == "True" and int(system_returned) >= 60
    assert kept_mapped == "False" and int(kept_returned) <= 4


@pytest.mark.parametrize(
    ("choice", "device", "kept"),
    [("auto", "cpu", True), ("auto", "cuda", False), ("on", "cuda", True), ("off", "cpu", False)],  # flag words
)
def test_train_and_benchmark_keep_cpu_memory_when_they_run_on_the_cpu(monkeypatch, choice, device, kept):
    calls = []
    monkeypatch.setattr(cpu_memory, "keep_freed_cpu_memory", lambda: calls.append(1) or True)
    from ceit_hf.training.arguments import SWITCH  # the one parser of the on/off/auto flags

    assert cpu_memory.keep_freed_cpu_memory_if(SWITCH[choice], torch.device(device)) is kept
    assert len(calls) == int(kept)
    with pytest.raises(ValueError, match="True, False or 'auto'"):
        cpu_memory.keep_freed_cpu_memory_if("on", "cpu")
