"""glibc's malloc set up for training on the CPU: freed tensor memory stays in the process.

By default glibc hands a freed block of 128 KiB or more back to the kernel (raising that bound
as it goes, up to 32 MiB), so a training step on the CPU often maps its activations and
gradients afresh and the kernel zeroes every page again on first touch. With the mmap threshold
at its 32 MiB maximum and the trim threshold at 1 GiB, blocks below 32 MiB are reused from
malloc's heap instead: the quickstart model's steps ran 4-12 % faster on a 2-core CPU
(``benchmarks/allocator.py``), at the price of up to 1 GiB of freed memory kept by the process.

Applied by ``fer run`` when it trains on the CPU (for its whole process); worker processes forked
after it inherit the setting. ``FER_MALLOC_TUNE=0`` leaves malloc as it is. Elsewhere than
glibc (macOS, Windows, musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc's malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's largest accepted value on 64-bit hosts
TRIM_THRESHOLD = 1 << 30


def tune_malloc() -> bool:
    """Set glibc's thresholds; whether they were set (setting them again is harmless)."""
    if os.environ.get("FER_MALLOC_TUNE", "1") in ("0", "false", "no") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # mmap first: setting either one stops glibc's own adjustment of the mmap threshold
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                      TRIM_THRESHOLD))
