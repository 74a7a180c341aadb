"""The persistent compilation cache: a second process loads what the first compiled."""

import os
import subprocess
import sys

from xla_env import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROBE = """
import sys, jax, jax.numpy as jnp
from geossl.train import compile_cache
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
compile_cache.enable(sys.argv[1], min_compile_s=0)
jax.jit(lambda x: jnp.tanh(x @ x.T).sum() * 3.0)(jnp.ones((48, 48))).block_until_ready()
print("hits", events.count("/jax/compilation_cache/cache_hits"),
      "misses", events.count("/jax/compilation_cache/cache_misses"))
"""


def _probe(directory):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags())
    done = subprocess.run([sys.executable, "-c", _PROBE, directory], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    words = done.stdout.split()
    return int(words[words.index("hits") + 1]), int(words[words.index("misses") + 1])


def test_second_process_hits_the_cache(tmp_path):
    directory = str(tmp_path / "jax")
    hits, misses = _probe(directory)
    assert hits == 0 and misses >= 1 and os.listdir(directory)
    hits, misses = _probe(directory)
    assert hits >= 1 and misses == 0


def test_default_directory_is_per_user_and_configurable(monkeypatch):
    from geossl.train import compile_cache
    monkeypatch.delenv("GEOSSL_CACHE", raising=False)
    assert compile_cache.default_directory() == os.path.expanduser("~/.cache/geossl/jax")
    monkeypatch.setenv("GEOSSL_CACHE", "/scratch/me")
    assert compile_cache.default_directory() == "/scratch/me/jax"


def test_off_for_cpu_runs_over_several_devices(tmp_path):
    """The test process has 8 simulated CPU devices: reloaded programs would lose their collectives."""
    import jax
    from geossl.train import compile_cache
    assert jax.device_count() == 8 and not compile_cache.supported()
    before = jax.config.jax_compilation_cache_dir
    assert compile_cache.enable(str(tmp_path / "jax")) is None
    assert jax.config.jax_compilation_cache_dir == before and not (tmp_path / "jax").exists()
