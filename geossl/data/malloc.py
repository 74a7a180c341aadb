"""glibc allocator settings for processes that build batches of large numpy arrays.

A rendered 224 px 13-band view is 2.6 MB; building a batch keeps dozens of such arrays and their
temporaries alive. glibc serves blocks that large with fresh ``mmap`` pages and returns them on
free, so every temporary costs page faults and zeroing: a third of the input pipeline's CPU time in
benchmarks/input_pipeline.py (grain, no workers: 14.3 → 9.3 ms a SoftCon sample with these
settings). ``reuse_freed_memory()`` serves blocks up to 256 MB from the heap and keeps up to 1 GB of
freed memory for reuse. It is a no-op where the C library has no ``mallopt`` (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_DONE: set[int] = set()


def reuse_freed_memory(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30,
                       top_pad: int = 64 << 20) -> bool:
    """Applies the settings once per process; True when glibc accepted them."""
    if os.getpid() in _DONE:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = all(mallopt(option, value) == 1 for option, value in (
        (_M_MMAP_THRESHOLD, mmap_threshold), (_M_TRIM_THRESHOLD, trim_threshold),
        (_M_TOP_PAD, top_pad)))
    if ok:
        _DONE.add(os.getpid())
    return ok
