"""`ceit_hf.cpu_memory.keep_freed_cpu_memory` and train.py's `--keep_freed_cpu_memory`."""

import subprocess
import sys

import pytest
import torch

from ceit_hf import cpu_memory
from ceit_hf.cpu_memory import glibc


# Holds a 64 MiB tensor (above glibc's largest mmap threshold) and prints the bytes glibc has mmapped meanwhile; then
# frees and allocates it again and prints whether the second block reused the first one's memory.
PROBE = """
import ctypes, sys, torch
from ceit_hf.cpu_memory import glibc, keep_freed_cpu_memory
if sys.argv[1] == "keep":
    assert keep_freed_cpu_memory()
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = glibc()
libc.mallinfo2.restype = Info
block = torch.ones(64 << 20, dtype=torch.uint8)
mapped = libc.mallinfo2().hblkhd
first = block.data_ptr()
del block
again = torch.ones(64 << 20, dtype=torch.uint8)
print(mapped >= 64 << 20, again.data_ptr() == first)
"""


@pytest.mark.skipif(glibc() is None, reason="glibc's allocator only")
@pytest.mark.parametrize("mode", ["system", "keep"])
def test_large_blocks_come_from_the_heap_and_are_reused(mode):
    """glibc's defaults map a 64 MiB block on its own (given back on free); kept, it comes from the heap, and a
    block of the same size allocated after the free reuses the freed memory."""
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    mapped, reused = out.stdout.split()
    assert mapped == ("True" if mode == "system" else "False")
    if mode == "keep":
        assert reused == "True"


@pytest.mark.parametrize(
    ("choice", "device", "kept"),
    [("auto", "cpu", True), ("auto", "cuda", False), ("on", "cuda", True), ("off", "cpu", False)],
)
def test_train_and_benchmark_keep_cpu_memory_when_they_run_on_the_cpu(monkeypatch, choice, device, kept):
    calls = []
    monkeypatch.setattr(cpu_memory, "keep_freed_cpu_memory", lambda: calls.append(1) or True)
    assert cpu_memory.keep_freed_cpu_memory_if(choice, torch.device(device)) is kept
    assert len(calls) == int(kept)
    with pytest.raises(ValueError, match="'on', 'off' or 'auto'"):
        cpu_memory.keep_freed_cpu_memory_if("yes", "cpu")
