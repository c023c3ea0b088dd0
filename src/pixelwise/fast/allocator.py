"""glibc malloc settings for large, short-lived tensors.

PyTorch's CPU tensors come from ``malloc``. glibc serves blocks above its mmap threshold
(128 KiB, rising to at most 32 MiB) with a fresh ``mmap`` and returns them with ``munmap``, so
every activation of a segmentation network is mapped, zero-filled page by page and unmapped on
every step: millions of page faults per epoch (see ``../shared/PERF-NOTES.md``). Raising the
mmap and trim thresholds keeps freed blocks in the heap for the next step instead.

The ``MALLOC_*_`` environment variables do the same but are read only when the process starts;
``mallopt`` changes the running process, so ``pixelwise train`` can apply it itself.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger("pixelwise.allocator")

# mallopt parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

# Blocks up to 1 GiB come from the heap; keep up to 2 GiB of freed memory; grow by 256 MiB.
SETTINGS = {M_MMAP_THRESHOLD: 1 << 30, M_TRIM_THRESHOLD: (1 << 31) - 1, M_TOP_PAD: 1 << 28}

_applied = False


def tune_malloc() -> bool:
    """Apply :data:`SETTINGS` with ``mallopt``; True when they are in force.

    A no-op (False) off Linux or without glibc. Applying it twice is harmless.
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
    if not _applied:
        log.debug("mallopt refused the allocator settings; continuing with the defaults")
    return _applied
