"""XLA:CPU compile options of the train step (docs/DESIGN.md "Performance", session 14).

By default XLA:CPU hands dots, reductions and convolutions to YNNPACK. Its reductions are what
makes BatchNorm's statistics cheap (20–40× XLA's own loop over the batch and spatial axes), but
its convolutions run on one thread: a 3×3 convolution at 16 × 56² × 64, forward and both
gradients, takes 66 ms at 1.07 CPU-seconds per second against 45 ms at 1.74 for XLA's own. The
step therefore keeps YNNPACK for dots and reductions only: a ResNet-50 step 5–8% faster, ViT-S
and Swin-T unchanged (``benchmarks/backbone_step.py --xla_options``).

``run_steps_on_calling_thread()`` turns off jax's asynchronous CPU dispatch, so that a
single-device CPU step runs on the thread that calls it (the GIL released meanwhile, as before).
XLA then allocates the step's temporary buffer on that thread: from the main thread, with
``malloc.keep_main_heap()``, it reuses its pages every step instead of faulting in fresh ones
(docs/DESIGN.md "Performance", session 22). Executions over several devices stay asynchronous.

``set_step_options_in_xla_flags()`` makes the step's options the process's default, so a user's
own ``jax.jit`` gets them without passing ``compiler_options`` (session 23).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp

#: The options, in XLA's ``DebugOptions`` spelling of this jaxlib.
CPU_STEP_OPTIONS = (("xla_cpu_experimental_ynn_fusion_type",
                     "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"),)


def run_steps_on_calling_thread() -> bool:
    """Sets ``jax_cpu_enable_async_dispatch`` off before jax creates its CPU client (it is read
    then). True where it takes effect; False once jax's backends exist (nothing is changed)."""
    from jax._src import xla_bridge
    if xla_bridge.backends_are_initialized():
        return not jax.config.values["jax_cpu_enable_async_dispatch"]
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return True


#: A child interpreter that only makes XLA's compile options: XLA parses XLA_FLAGS there and exits
#: on a flag or value it does not know, before any jax client exists.
_PARSE_XLA_FLAGS = "from jaxlib import xla_client; xla_client.CompileOptions()"


def set_step_options_in_xla_flags() -> bool:
    """Adds :data:`CPU_STEP_OPTIONS` to ``XLA_FLAGS`` before jax starts, so every ``jax.jit`` of
    the process (and of its child processes) compiles with them. True where set; False, changing
    nothing, once jax's backends exist (XLA has read its flags), where ``XLA_FLAGS`` already names
    one of the options (the user's value stays), or where this jaxlib does not parse them: that
    is asked of a child interpreter first (~0.2 s), since XLA exits on a flag it does not know."""
    from jax._src import xla_bridge
    current = os.environ.get("XLA_FLAGS", "")
    if xla_bridge.backends_are_initialized() or any(f"--{name}=" in current
                                                     for name, _ in CPU_STEP_OPTIONS):
        return False
    added = " ".join(f"--{name}={value}" for name, value in CPU_STEP_OPTIONS)
    flags = f"{current} {added}".strip()
    try:
        parsed = subprocess.run([sys.executable, "-c", _PARSE_XLA_FLAGS],
                                env=dict(os.environ, XLA_FLAGS=flags), capture_output=True,
                                timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        parsed = False
    if parsed:
        os.environ["XLA_FLAGS"] = flags
    return parsed


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


def jit_with_step_options(fn, **jit_kwargs):
    """``jax.jit(fn, **jit_kwargs)`` compiled with :func:`step_compiler_options` of jax's default
    devices: the evaluation's training steps and forward passes compile as the trainer's step
    (a ResNet-50 fine-tuning step 2,628 → 1,654 ms, its forward over 32 images 2,428 → 1,933 ms
    on a 2-core host: docs/DESIGN.md "Performance", session 23)."""
    return jax.jit(fn, compiler_options=step_compiler_options(jax.devices()), **jit_kwargs)
