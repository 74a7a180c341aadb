"""XLA:CPU compile options of the train step (docs/DESIGN.md "Performance", session 14).

By default XLA:CPU hands dots, reductions and convolutions to YNNPACK. Its reductions are what
makes BatchNorm's statistics cheap (20–40× XLA's own loop over the batch and spatial axes), but
its convolutions run on one thread: a 3×3 convolution at 16 × 56² × 64, forward and both
gradients, takes 66 ms at 1.07 CPU-seconds per second against 45 ms at 1.74 for XLA's own. The
step therefore keeps YNNPACK for dots and reductions only: a ResNet-50 step 5–8% faster, ViT-S
and Swin-T unchanged (``benchmarks/backbone_step.py --xla_options``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

#: The options, in XLA's ``DebugOptions`` spelling of this jaxlib.
CPU_STEP_OPTIONS = (("xla_cpu_experimental_ynn_fusion_type",
                     "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"),)


@functools.cache
def _accepted(options: tuple) -> bool:
    """Whether this jaxlib compiles with ``options`` (an experimental option may be renamed)."""
    try:
        jax.jit(lambda x: x + 1).lower(jnp.zeros((2,), jnp.float32)).compile(
            compiler_options=dict(options))
    except Exception:  # noqa: BLE001 (XLA reports an unknown option in several error types)
        return False
    return True


def step_compiler_options(devices) -> dict | None:
    """``compiler_options`` for a step running on ``devices``: :data:`CPU_STEP_OPTIONS` when they
    are CPUs and this jaxlib accepts them, else None (XLA's defaults)."""
    if {d.platform for d in devices} != {"cpu"} or jax.default_backend() != "cpu":
        return None
    return dict(CPU_STEP_OPTIONS) if _accepted(CPU_STEP_OPTIONS) else None
