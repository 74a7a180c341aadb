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
for _ in range(2):
    compiled(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
compiled(x).block_until_ready()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(compiled.memory_analysis().temp_size_in_bytes, faults)
"""


def _temp_bytes_and_faults(mode: str) -> tuple[int, int]:
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(1))
    done = subprocess.run([sys.executable, "-c", JOB, mode], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    temp, faults = (int(v) for v in done.stdout.split())
    return temp, faults


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_step_buffers_reuse_their_pages_with_keep_step_memory():
    temp, faults = _temp_bytes_and_faults("default")
    pages = temp // 4096
    assert temp >= 64 << 20, temp   # the premise: beyond glibc's largest mmap threshold (32 MB)
    assert faults >= pages // 2, (faults, pages)   # glibc's default: the buffer is mapped again
    temp_kept, faults_kept = _temp_bytes_and_faults("keep")
    assert temp_kept == temp and faults_kept < pages // 20, (faults_kept, pages)


def test_one_cpu_device_is_judged_from_the_environment(monkeypatch):
    """main.py keeps step memory only where one CPU device will run the steps: several devices'
    threads allocating from one arena cost more than the faults they save."""
    import types
    from geossl.parallel import cpu_options
    no_config = types.SimpleNamespace(config=types.SimpleNamespace(jax_platforms=None,
                                                                   jax_num_cpu_devices=-1))
    monkeypatch.setattr(cpu_options, "jax", no_config)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    for platforms, expected in (("cpu", True), ("cuda", False), ("tpu,cpu", False),
                                ("CPU", True)):
        monkeypatch.setenv("JAX_PLATFORMS", platforms)
        assert cpu_options.one_cpu_device_expected() is expected, platforms
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    for flags, expected in (("--xla_force_host_platform_device_count=8", False),
                            ("--xla_backend_optimization_level=0 "
                             "--xla_force_host_platform_device_count=1", True)):
        monkeypatch.setenv("XLA_FLAGS", flags)
        assert cpu_options.one_cpu_device_expected() is expected, flags
    monkeypatch.delenv("XLA_FLAGS")
    no_config.config.jax_num_cpu_devices = 4
    assert not cpu_options.one_cpu_device_expected()
    no_config.config.jax_num_cpu_devices = -1
    monkeypatch.delenv("JAX_PLATFORMS")   # no platform named: an installed accelerator decides
    real_find_spec = cpu_options.importlib.util.find_spec
    monkeypatch.setattr(cpu_options.importlib.util, "find_spec",
                        lambda name: object() if name == "libtpu" else real_find_spec(name))
    assert not cpu_options.one_cpu_device_expected()
