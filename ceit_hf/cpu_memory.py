"""glibc's allocator and CeiT's large CPU tensors (`--keep_freed_cpu_memory`): glibc maps every block above its mmap
threshold (at most 32 MiB) anew and unmaps it on `free`, so a CeiT step at batch 32 faults the stem's large maps in
again each time; kept in the heap, CeiT-T's step storing LeFF's activations was 12% faster (docs/performance.md)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform


M_TRIM_THRESHOLD = -1  # <malloc.h>: free memory at the heap's top kept below this many bytes
M_MMAP_MAX = -4  # <malloc.h>: how many blocks may be mmapped at once; 0 serves every block from the heap
TRIM_ABOVE = 2**31 - 1  # mallopt's largest value: freed memory at the heap's top is given back only above 2 GiB


class MallInfo2(ctypes.Structure):
    """glibc's `struct mallinfo2` (`hblkhd`: bytes in mmapped blocks)."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


@functools.cache
def glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc >= 2.33 (`mallinfo2` and `mallopt`), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallinfo2.restype = MallInfo2
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def keep_freed_cpu_memory() -> bool:
    """Serve every CPU allocation from glibc's heap and keep freed blocks there (the process's memory stays at its
    peak, for good). Returns whether glibc took both settings (False without glibc)."""
    libc = glibc()
    return libc is not None and bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_ABOVE))


def keep_freed_cpu_memory_if(enabled: bool | str, device) -> bool:
    """`keep_freed_cpu_memory` when `enabled` is True, or "auto" and `device` is the CPU; whether memory is now kept."""
    if enabled not in (True, False, "auto"):
        raise ValueError(f"keep_freed_cpu_memory takes True, False or 'auto', got {enabled!r}.")
    on_cpu = getattr(device, "type", device) == "cpu"
    return (enabled is True or (enabled == "auto" and on_cpu)) and keep_freed_cpu_memory()
