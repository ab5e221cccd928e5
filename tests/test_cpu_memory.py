"""`ceit_hf.cpu_memory.keep_freed_cpu_memory` and train.py's `--keep_freed_cpu_memory`."""

import subprocess
import sys

import pytest
import torch

from ceit_hf import cpu_memory
from ceit_hf.cpu_memory import glibc


# Fills and frees a 64 MiB tensor (above glibc's largest mmap threshold) five times, as a training step does its
# large activations; prints whether glibc mmapped it and the page faults of the last four rounds (4 KiB pages: 16,384
# per round when each block is fresh memory). First with glibc's defaults, then with freed memory kept.
PROBE = """
import ctypes, resource, torch
from ceit_hf.cpu_memory import glibc, keep_freed_cpu_memory
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = glibc()
libc.mallinfo2.restype = Info
def rounds():
    for round in range(5):
        if round == 1:
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = torch.ones(64 << 20, dtype=torch.uint8)
        mapped = libc.mallinfo2().hblkhd >= 64 << 20
        del block
    print(mapped, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
rounds()
assert keep_freed_cpu_memory()
rounds()
"""


@pytest.mark.skipif(glibc() is None, reason="glibc's allocator only")
def test_large_blocks_come_from_the_heap_and_are_reused():
    """glibc's defaults map a 64 MiB block on its own and give it back on free, so the next one faults in every page
    again; kept, it comes from the heap, and the next blocks reuse the freed memory without page faults."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    (system_mapped, system_faults), (kept_mapped, kept_faults) = (line.split() for line in out.stdout.splitlines())
    pages = 4 * (64 << 20) // 4096
    assert system_mapped == "True" and int(system_faults) >= pages * 9 // 10
    # measured: one round extends the heap (16,384 faults), the other three reuse it
    assert kept_mapped == "False" and int(kept_faults) < pages // 2


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
