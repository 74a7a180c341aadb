"""The train step's XLA:CPU options (``parallel/cpu_options.py``): accepted by this jaxlib, they
move convolutions off YNNPACK and keep its reductions and dots, and change no value."""

import re

import jax
import jax.numpy as jnp
import numpy as np

from geossl.parallel import cpu_options


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
