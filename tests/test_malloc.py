"""``malloc.keep_step_memory``: an XLA:CPU program's temporary buffer, allocated on jax's worker
thread at each execution, reuses its pages from the second execution on (glibc's default maps
fresh ones, which fault in again every time)."""

import os
import subprocess
import sys

import pytest

from xla_env import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB = """
import resource, sys
from geossl.data import malloc
if sys.argv[1] == "keep":
    assert malloc.keep_step_memory() and malloc.keep_step_memory()
    assert malloc.reuse_freed_memory()   # the pipeline's settings then change nothing
import jax
import jax.numpy as jnp

def f(x):
    y = x @ x.T                     # (n, n) temporaries: the product and its reversed copy
    return (y[::-1] + y.T).sum(0)

x = jnp.ones((4096, 8), jnp.float32)
compiled = jax.jit(f).lower(x).compile()
compiled(x).block_until_ready()
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    compiled(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(compiled.memory_analysis().temp_size_in_bytes, *faults)
"""


def _temp_bytes_and_faults(mode: str) -> tuple[int, list[int]]:
    """(temporary bytes, minor faults of each of 6 executions after the first)."""
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(1))
    done = subprocess.run([sys.executable, "-c", JOB, mode], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    temp, *faults = (int(v) for v in done.stdout.split())
    return temp, faults


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_step_buffers_reuse_their_pages_with_keep_step_memory():
    """glibc's default maps the buffer afresh at every execution; kept, executions reuse it, not
    every one: a small allocation left where the freed buffer was makes the heap grow again (here
    every other execution; ViT-S/14 steps 1 in 4)."""
    temp, faults = _temp_bytes_and_faults("default")
    pages = temp // 4096
    assert temp >= 64 << 20, temp   # the premise: beyond glibc's largest mmap threshold (32 MB)
    assert min(faults) >= pages // 2, (faults, pages)
    temp_kept, kept = _temp_bytes_and_faults("keep")
    assert temp_kept == temp and min(kept) < pages // 20, (kept, pages)
