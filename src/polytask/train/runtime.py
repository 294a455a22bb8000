"""Process-level settings that make CPU training steps cheaper.

glibc returns freed heap memory to the kernel once more than ``M_TRIM_THRESHOLD`` (by default
twice the dynamic mmap threshold, about 32 MB) is free at the top of the heap. Fused expert
banks allocate and free tens of megabytes of temporaries every step ([E, B, h] activations and
their gradients), so with the defaults every step gives those pages back and faults them in
again: 7-30 thousand minor page faults and 15-60 ms of kernel time per step at
16 experts x [256, 128] (measured by benchmarks/throughput_archs.py). Keeping the heap and
raising the mmap threshold removes that cost; the memory stays reserved for the next step,
which is exactly what a training loop wants.

The setting is process-wide (it changes how the whole process's ``malloc`` behaves, not only
polytask's tensors), so a program that embeds polytask and prefers glibc's defaults can opt out
with the environment variable ``POLYTASK_KEEP_HEAP=0`` (read each time training starts).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEEP_HEAP_BYTES = 1 << 30
MMAP_THRESHOLD_BYTES = 32 << 20

OPT_OUT = "POLYTASK_KEEP_HEAP"

_tuned = False


def opted_out() -> bool:
    """``POLYTASK_KEEP_HEAP`` set to 0, false, no or off."""
    return os.environ.get(OPT_OUT, "").strip().lower() in ("0", "false", "no", "off")


def keep_heap_between_steps() -> bool:
    """Tune glibc's allocator once per process (unless opted out); a no-op (False) elsewhere
    and when opted out."""
    global _tuned
    if _tuned:
        return True
    if opted_out() or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _tuned = bool(mallopt(M_TRIM_THRESHOLD, KEEP_HEAP_BYTES)) and bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    )
    return _tuned
