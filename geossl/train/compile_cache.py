"""Persistent XLA compilation cache: a second or resumed run loads its compiled step from disk.

``enable(directory)`` points jax's persistent cache at ``directory`` (default
``$GEOSSL_CACHE/jax`` or ``~/.cache/geossl/jax``, one per user) and caches every program that
took at least ``min_compile_s`` to compile. main.py calls it unless ``--nocompilation_cache``.
Entries are keyed by the program, the jax/jaxlib version, the backend and its flags, so a stale
entry is never used; deleting the folder is always safe.

CPU runs over several devices keep it off (``enable`` returns None there): with jax 0.10 a
reloaded multi-device CPU program loses its collectives' wiring. Over several processes the first
all-gather fails ("Gloo AllGather failed"); over simulated devices in one process the all-gather
rendezvous of a reloaded step can deadlock ("Termination timeout for all gather") and abort the run.
One-device CPU runs and accelerators (GPU, TPU) use it.
"""

from __future__ import annotations

import os

import jax


def default_directory() -> str:
    root = os.environ.get("GEOSSL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "geossl")
    return os.path.join(root, "jax")


def supported() -> bool:
    """False for CPU runs over several devices, whose reloaded programs lose their collectives."""
    return not (jax.default_backend() == "cpu" and jax.device_count() > 1)


def enable(directory: str | None = None, *, min_compile_s: float = 1.0) -> str | None:
    """Turns the persistent compilation cache on in ``directory``; returns the directory, or None
    where it is not ``supported()`` (the cache stays off)."""
    if not supported():
        return None
    directory = os.path.abspath(os.path.expanduser(directory or default_directory()))
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_s))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
