"""glibc allocator settings: for processes that build batches of large numpy arrays, and for the
process that runs XLA:CPU steps.

A rendered 224 px 13-band view is 2.6 MB; building a batch keeps dozens of such arrays and their
temporaries alive. glibc serves blocks that large with fresh ``mmap`` pages and returns them on
free, so every temporary costs page faults and zeroing: a third of the input pipeline's CPU time in
benchmarks/input_pipeline.py (grain, no workers: 14.3 → 9.3 ms a SoftCon sample with these
settings). ``reuse_freed_memory()`` serves blocks up to 256 MB from the heap and keeps up to 1 GB of
freed memory for reuse.

XLA:CPU allocates each execution's temporary buffer (2.6 GB for a ViT-S/14 step at batch 8 × 2
views) with malloc on one of its worker threads. A thread's arena cannot hold a block that large,
so glibc maps fresh pages for it and unmaps them when the step ends: every step faults in and
zeroes the whole buffer again (640k minor faults and 1.2 s of kernel time a step).
``keep_step_memory()`` puts every thread on the main heap, never maps blocks apart and never trims
the heap, so the next step reuses the pages (docs/DESIGN.md "Performance", session 19). It is
opt-in (``main.py --keep_step_memory``, the benchmarks' ``--malloc keep``): one arena costs where
several threads allocate at once. ViT and Swin steps gained 4–18%, but the trainer's ResNet-50
steps, whose convolutions allocate scratch on both threads, ran slower (dense: 3,772 → 4,405 ms a
step), and 8 simulated CPU devices took 25% longer over three test files.

Both are no-ops where the C library has no ``mallopt`` (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -3, -4, -8
_DONE: set[int] = set()
_KEPT: set[int] = set()


def _mallopt():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None


def keep_step_memory() -> bool:
    """One malloc arena for every thread, no separately mapped blocks, no heap trimming: freed
    memory, however large, stays in the process for the next allocation. Call it before the first
    jax computation (XLA's worker threads keep the arena they first allocate from). The process
    then keeps its peak heap. True when glibc accepted the settings (once per process)."""
    if os.getpid() in _KEPT:
        return True
    mallopt = _mallopt()
    if mallopt is None:
        return False
    ok = all(mallopt(option, value) == 1 for option, value in (
        (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))
    if ok:
        _KEPT.add(os.getpid())
    return ok


def reuse_freed_memory(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30,
                       top_pad: int = 64 << 20) -> bool:
    """Applies the settings once per process; True when glibc accepted them. After
    :func:`keep_step_memory` in the same process there is nothing to do (it keeps more)."""
    if os.getpid() in _DONE or os.getpid() in _KEPT:
        return True
    mallopt = _mallopt()
    if mallopt is None:
        return False
    ok = all(mallopt(option, value) == 1 for option, value in (
        (_M_MMAP_THRESHOLD, mmap_threshold), (_M_TRIM_THRESHOLD, trim_threshold),
        (_M_TOP_PAD, top_pad)))
    if ok:
        _DONE.add(os.getpid())
    return ok
