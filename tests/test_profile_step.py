"""benchmarks/profile_step.py: XLA operations of a compiled function are classed and timed."""

import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import profile_step  # noqa: E402


def test_operations_are_classed_and_timed_from_the_trace(tmp_path):
    def f(x, w, a, b):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y, a @ b, jnp.transpose(x, (3, 1, 2, 0))

    args = (jnp.ones((2, 16, 16, 8)), jnp.ones((3, 3, 8, 32)), jnp.ones((96, 64)),
            jnp.ones((64, 48)))
    compiled = jax.jit(f).lower(*args).compile()
    ops = profile_step.parse_hlo(compiled.as_text())
    jax.block_until_ready(compiled(*args))
    jax.profiler.start_trace(str(tmp_path), create_perfetto_trace=True)
    for _ in range(3):
        jax.block_until_ready(compiled(*args))
    jax.profiler.stop_trace()
    times = profile_step.op_times(str(tmp_path))
    classes = {profile_step.op_class(name, ops) for name in times}
    assert {"convolution", "dot (matmul)", "copy / transpose"} <= classes, (classes, sorted(times))
    assert all(t >= 0 for t in times.values()) and sum(times.values()) > 0
    assert "other" not in classes, sorted(n for n in times if profile_step.op_class(n, ops) == "other")
