"""The train step's XLA:CPU options (``parallel/cpu_options.py``): accepted by this jaxlib, they
move convolutions off YNNPACK and keep its reductions and dots, and change no value."""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from geossl.parallel import cpu_options
from xla_env import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def conv_bn(x, w):
    """A 3×3 convolution, BatchNorm statistics over (B, H, W), a 1×1 projection: (B, H, W, 8)."""
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    mean = y.mean((0, 1, 2))
    var = ((y - mean) ** 2).mean((0, 1, 2))
    y = (y - mean) * jax.lax.rsqrt(var + 1e-5)
    return y @ jnp.eye(y.shape[-1], 8)


def ynn_roots(text: str) -> set:
    """Root operations of the YNNPACK fusions of a compiled module's text."""
    bodies = {m.group(1): m.group(2) for m in re.finditer(
        r"^%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", text, re.M | re.S)}
    roots = set()
    for name in re.findall(r"fusion\([^\n]*calls=%?([\w.\-]+)[^\n]*__ynn_fusion", text):
        root = re.search(r"ROOT %[\w.\-]+ = \S+ ([a-z\-]+)\(", bodies.get(name, ""))
        roots.add(root.group(1) if root else "?")
    return roots


def compiled(options, x, w):
    r = jnp.asarray(np.random.default_rng(1).standard_normal(x.shape[:3] + (8,)), jnp.float32)
    loss = lambda x, w: (conv_bn(x, w) * r).sum()  # noqa: E731
    return jax.jit(jax.value_and_grad(loss, (0, 1))).lower(x, w).compile(compiler_options=options)


def test_convolutions_leave_ynnpack_reductions_and_dots_stay_and_values_agree():
    options = cpu_options.step_compiler_options(jax.devices())
    assert options == dict(cpu_options.CPU_STEP_OPTIONS)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 28, 28, 64)), jnp.float32)
    w = jnp.asarray(0.1 * rng.standard_normal((3, 3, 64, 64)), jnp.float32)
    default, tuned = compiled(None, x, w), compiled(options, x, w)
    assert "convolution" in ynn_roots(default.as_text())      # the default hands them over ...
    assert "convolution" not in ynn_roots(tuned.as_text())    # ... the step's options do not
    assert {"reduce", "dot"} <= ynn_roots(tuned.as_text())
    (l0, g0), (l1, g1) = default(x, w), tuned(x, w)
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()))


def test_an_option_this_jaxlib_lacks_falls_back_to_the_defaults(monkeypatch):
    monkeypatch.setattr(cpu_options, "CPU_STEP_OPTIONS", (("xla_cpu_no_such_option", "1"),))
    assert cpu_options.step_compiler_options(jax.devices()) is None


def test_other_platforms_keep_the_defaults():
    class Gpu:
        platform = "gpu"
    assert cpu_options.step_compiler_options([Gpu()]) is None


USER_JOB = """
import jax, jax.numpy as jnp, numpy as np
from geossl.parallel import cpu_options
from test_cpu_options import compiled, ynn_roots
assert cpu_options.set_step_options_in_xla_flags()
assert not cpu_options.set_step_options_in_xla_flags()      # named already: left as it is
x, w = jnp.ones((2, 28, 28, 64)), jnp.ones((3, 3, 64, 64))
print(sorted(ynn_roots(compiled(None, x, w).as_text())))
"""


def test_step_options_in_xla_flags_reach_a_plain_jit():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]),
               JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(1))
    done = subprocess.run([sys.executable, "-c", USER_JOB], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    roots = eval(done.stdout.strip().splitlines()[-1])
    assert "convolution" not in roots and {"reduce", "dot"} <= set(roots)


def test_xla_flags_this_jaxlib_cannot_parse_are_not_set(monkeypatch):
    from jax._src import xla_bridge
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
    monkeypatch.setattr(cpu_options, "CPU_STEP_OPTIONS", (("xla_cpu_no_such_option", "1"),))
    assert not cpu_options.set_step_options_in_xla_flags()
    assert os.environ["XLA_FLAGS"] == "--xla_backend_optimization_level=0"


def test_xla_flags_stay_once_jax_has_started():
    before = os.environ.get("XLA_FLAGS")
    jax.devices()
    assert not cpu_options.set_step_options_in_xla_flags()
    assert os.environ.get("XLA_FLAGS") == before


def test_jit_with_step_options_compiles_as_the_trainer_step():
    """The evaluation's training steps and forward passes (``cpu_options.jit_with_step_options``)
    get the train step's options."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, 28, 28, 64)), jnp.float32)
    w = jnp.asarray(0.1 * rng.standard_normal((3, 3, 64, 64)), jnp.float32)
    loss = lambda x, w: (conv_bn(x, w) ** 2).sum()  # noqa: E731
    step = cpu_options.jit_with_step_options(jax.value_and_grad(loss, (0, 1)))
    assert "convolution" not in ynn_roots(step.lower(x, w).compile().as_text())
    plain = jax.jit(jax.value_and_grad(loss, (0, 1)))
    assert "convolution" in ynn_roots(plain.lower(x, w).compile().as_text())
