"""glibc malloc settings for steady CPU work (the app, the benchmarks, evaluation, training).

By default glibc returns freed heap memory to the OS once the free top of the heap exceeds a
threshold that adapts to earlier allocations, so a network whose activations peak above it faults
those pages back in on every forward. DSNet's shared N(Y_i) history raises the peak within a
stage: thousands of page faults per DSNet50 forward at batch 1, or none, depending on the heap's
history (benchmarks/cpu_details.py). Fixed thresholds keep freed memory for reuse instead.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>


def retain_freed_memory(trim_threshold: int = 1 << 30, mmap_threshold: int = 32 << 20) -> bool:
    """Keep up to ``trim_threshold`` bytes of freed heap and serve blocks below ``mmap_threshold``
    (32 MiB, glibc's maximum) from it. False where the C library has no ``mallopt`` (macOS, Windows)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, TypeError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
