"""Keep freed memory in the process (glibc), so training steps stop paying page faults.

glibc's malloc serves large blocks with mmap and returns freed memory at the top of the heap to
the system; a training step frees and re-allocates the same large tensors every step and so
page-faults them back in each time. Measured here on 2 CPU cores: a spiking CNN step 1.4 s ->
0.56 s, and the soft threshold parametrization's overhead on ResNet-18 1.06-1.19 -> 1.02-1.05
(docs/benchmarks.md). PyTorch's CPU performance guide recommends jemalloc or tcmalloc for the same
reason; this is the no-install equivalent. The process then keeps its peak memory until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_MAX = -4


def use_steady_allocator() -> bool:
    """Tell glibc never to trim the heap and never to use mmap; True if it took effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1)) and bool(mallopt(M_MMAP_MAX, 0))
