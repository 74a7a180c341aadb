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

``exec_with_huge_pages()`` is the default fix (main.py's ``--huge_pages``, the benchmarks'
``--malloc huge``): where the kernel gives transparent huge pages on request (``madvise`` mode, as
on Debian and Ubuntu), it starts the process again, same PID and arguments, with glibc's
``glibc.malloc.hugetlb=1`` tunable, which asks for huge pages on every block glibc maps. The buffer
then faults in 2 MB at a time: a ViT-S/14 step 700k → 11k faults, 1.75 → 0.3 s of kernel time,
5.5 → 4.4 s a step, with no shared arena (docs/DESIGN.md, session 21). glibc reads tunables only
at start, hence the new start.

``keep_main_heap()`` removes the faults altogether without one shared arena (main.py's
``--reuse_step_buffers``, the benchmarks' ``--malloc reuse``, both defaults): with jax's
asynchronous CPU dispatch off (``cpu_options.run_steps_on_calling_thread``), a one-device step
runs on the thread that calls it, so its buffer comes from the main heap, which then never maps
blocks apart and never trims. The trainer's SoftCon ViT-S/14 step spent 1.6–2.9 s a step in the
kernel zeroing fresh huge pages; with it, 0.01 s (docs/DESIGN.md, session 22).

Both mallopt settings are no-ops where the C library has no ``mallopt`` (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -3, -4, -8
HUGE_PAGE_TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
_TUNABLES_BEFORE = "GEOSSL_GLIBC_TUNABLES_BEFORE"   # set for the new start only
_RESTARTED: set[int] = set()
_APPLIED: dict[int, set[str]] = {}   # pid -> the settings applied in that process
_MAIN_HEAP_SETTINGS = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))


def _mallopt():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None


def _apply_once(name: str, settings, covered_by: tuple[str, ...] = ()) -> bool:
    """``mallopt`` each (option, value) of ``settings``, once per process; True when glibc accepted
    them all, or when ``name`` or a setting that keeps more (``covered_by``) is applied already."""
    applied = _APPLIED.setdefault(os.getpid(), set())
    if name in applied or applied.intersection(covered_by):
        return True
    mallopt = _mallopt()
    if mallopt is None:
        return False
    ok = all(mallopt(option, value) == 1 for option, value in settings)
    if ok:
        applied.add(name)
    return ok


def keep_step_memory() -> bool:
    """One malloc arena for every thread, no separately mapped blocks, no heap trimming: freed
    memory, however large, stays in the process for the next allocation. Call it before the first
    jax computation (XLA's worker threads keep the arena they first allocate from). The process
    then keeps its peak heap. True when glibc accepted the settings (once per process)."""
    return _apply_once("keep_step_memory", ((_M_ARENA_MAX, 1),) + _MAIN_HEAP_SETTINGS)


def keep_main_heap() -> bool:
    """No blocks mapped apart, no trimming: what the main thread frees, however large, its heap
    (the main arena) keeps for reuse. Other threads keep their own arenas; the settings are
    process-wide, so their heaps stop shrinking too, but a block too large for a thread heap
    (64 MB) is still mapped for it. With single-device CPU steps run on the calling thread
    (``cpu_options.run_steps_on_calling_thread``), each step's temporary buffer comes from the
    main heap, and from the second step on it faults nothing in. True when glibc accepted the
    settings (once per process)."""
    return _apply_once("keep_main_heap", _MAIN_HEAP_SETTINGS, covered_by=("keep_step_memory",))


def reuse_freed_memory(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30,
                       top_pad: int = 64 << 20) -> bool:
    """Applies the settings once per process; True when glibc accepted them. After
    :func:`keep_step_memory` or :func:`keep_main_heap` in the same process there is nothing to do
    (they keep more)."""
    return _apply_once("reuse_freed_memory", (
        (_M_MMAP_THRESHOLD, mmap_threshold), (_M_TRIM_THRESHOLD, trim_threshold),
        (_M_TOP_PAD, top_pad)), covered_by=("keep_step_memory", "keep_main_heap"))


def thp_mode(path: str = THP_MODE_FILE) -> str:
    """The kernel's transparent-huge-page mode: "always", "madvise", "never", or "" where the file
    is missing or unreadable (not Linux, a container hiding /sys)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return ""
    chosen = [word[1:-1] for word in text.split() if word.startswith("[")]
    return chosen[0] if chosen else ""


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the running glibc; None for another C library."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, OSError, ValueError, TypeError):
        return None


def huge_page_environ(environ: dict, mode: str, libc: tuple[int, int] | None) -> dict | None:
    """``environ`` with glibc's huge-page tunable added to GLIBC_TUNABLES, or None where a new
    start would change nothing: the tunable is there already, the kernel's mode is not "madvise"
    ("always" gives large blocks huge pages anyway, "never" never does), or the C library is not
    glibc ≥ 2.35 (the first to read it)."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if mode != "madvise" or libc is None or libc < (2, 35):
        return None
    if any(item.startswith("glibc.malloc.hugetlb=") for item in tunables.split(":")):
        return None
    joined = f"{tunables}:{HUGE_PAGE_TUNABLE}" if tunables else HUGE_PAGE_TUNABLE
    return dict(environ, GLIBC_TUNABLES=joined)


def huge_pages_state() -> str:
    """Whether this process's large blocks get huge pages, in words (for logs and benchmarks)."""
    mode = thp_mode()
    if mode == "always":
        return "huge pages (kernel THP always)"
    tunables = os.environ.get("GLIBC_TUNABLES", "").split(":")
    if mode == "madvise" and (os.getpid() in _RESTARTED or HUGE_PAGE_TUNABLE in tunables):
        return "huge pages (GLIBC_TUNABLES)"
    return f"4 kB pages (kernel THP {mode or 'unknown'})"


def exec_with_huge_pages() -> bool:
    """Starts this process again (``os.execve``: same PID, interpreter options and arguments)
    with glibc's huge-page tunable where it would help (:func:`huge_page_environ`); call it first
    thing in a script, before any work worth keeping. In the new start it puts GLIBC_TUNABLES back
    as it was, so that child processes (grain workers: their views gained nothing from huge pages)
    start as the user started this one. Returns False where there is nothing to do, in the new
    start, or where the process is interactive (a REPL, a notebook kernel); otherwise it does not
    return."""
    if os.getpid() in _RESTARTED:
        return False
    if _TUNABLES_BEFORE in os.environ:
        before = os.environ.pop(_TUNABLES_BEFORE)
        if before:
            os.environ["GLIBC_TUNABLES"] = before
        else:
            os.environ.pop("GLIBC_TUNABLES", None)
        _RESTARTED.add(os.getpid())
        return False
    env = huge_page_environ(dict(os.environ), thp_mode(), glibc_version())
    if env is None or hasattr(sys, "ps1") or "ipykernel" in sys.modules:
        return False
    argv = list(getattr(sys, "orig_argv", []))
    if not argv or not sys.executable:
        return False
    env[_TUNABLES_BEFORE] = os.environ.get("GLIBC_TUNABLES", "")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], env)
    return True  # not reached
