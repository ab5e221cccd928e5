"""glibc's allocator and CeiT's large CPU tensors.

glibc serves every allocation above its mmap threshold (at most 32 MiB on 64-bit Linux) with a fresh `mmap` and gives
it back to the kernel on `free`. A CeiT training step at batch 32 holds several tensors above that size (the stem's
64 x 112 x 112 maps: 103 MB each at fp32), so each step maps them anew and the kernel zeroes and faults in every page
again; DeiT's largest tensors stay under the threshold and are reused from the heap. `keep_freed_cpu_memory` turns
that off for the process: every block comes from the heap and freed memory stays there for the next step. Measured
on the 2-core Intel Xeon (docs/performance.md): CeiT-T's step storing LeFF's activations 12% faster, the default
(recomputing) step within the runs' spread, DeiT-T's unchanged.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform


M_TRIM_THRESHOLD = -1  # <malloc.h>: free memory at the heap's top kept below this many bytes
M_MMAP_MAX = -4  # <malloc.h>: how many blocks may be mmapped at once; 0 serves every block from the heap
TRIM_ABOVE = 2**31 - 1  # mallopt's largest value: freed memory at the heap's top is given back only above 2 GiB


class MallInfo2(ctypes.Structure):
    """glibc's `struct mallinfo2`: `uordblks` bytes in use in the heap, `hblkhd` bytes in mmapped blocks."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


@functools.cache
def glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (it has `mallinfo2`, returning a `MallInfo2`, and `mallopt`), else
    None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallinfo2.restype = MallInfo2
        libc.mallopt  # noqa: B018 (glibc >= 2.33 has both)
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def keep_freed_cpu_memory() -> bool:
    """Serve every CPU allocation of this process from glibc's heap and keep freed blocks there for reuse (no block
    given back to the kernel, so none is faulted in again). For a training process, whose memory peaks at every step
    anyway; the process's resident memory then stays at its peak. Cannot be undone in the process (glibc leaves its
    adaptive thresholds once they are set). Returns whether glibc took both settings (False where the C library is
    not glibc; an allocator preloaded in its place, tcmalloc or jemalloc, keeps freed memory by itself)."""
    libc = glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_ABOVE))


def keep_freed_cpu_memory_if(enabled: bool | str, device) -> bool:
    """`--keep_freed_cpu_memory` of train.py and the benchmark, as the recompute switches take it: `True`, or
    `"auto"` when `device` is the CPU, calls `keep_freed_cpu_memory`; `False` leaves the allocator as it is. Returns
    whether freed memory is now kept."""
    if enabled not in (True, False, "auto"):
        raise ValueError(f"keep_freed_cpu_memory takes True, False or 'auto', got {enabled!r}.")
    if enabled is True or (enabled == "auto" and getattr(device, "type", device) == "cpu"):
        return keep_freed_cpu_memory()
    return False
