"""Persistent XLA compilation cache: a second or resumed run loads its compiled step from disk.

``enable(directory)`` points jax's persistent cache at ``directory`` (default
``$GEOSSL_CACHE/jax`` or ``~/.cache/geossl/jax``, one per user) and caches every program that
took at least ``min_compile_s`` to compile. main.py calls it unless ``--nocompilation_cache``.
Entries are keyed by the program, the jax/jaxlib version, the backend and its flags, so a stale
entry is never used; deleting the folder is always safe.
"""

from __future__ import annotations

import os

import jax


def default_directory() -> str:
    root = os.environ.get("GEOSSL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "geossl")
    return os.path.join(root, "jax")


def enable(directory: str | None = None, *, min_compile_s: float = 1.0) -> str:
    """Turns the persistent compilation cache on in ``directory``; returns the directory."""
    directory = os.path.abspath(os.path.expanduser(directory or default_directory()))
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_s))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
