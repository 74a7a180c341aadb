"""XLA options of every test process, subprocesses included (conftest.py sets them for pytest's own
process before jax is imported; tests that start main.py or a CLI pass :func:`xla_flags`).

LLVM's optimisation level 0, and XLA:CPU's elemental emitters instead of its MLIR fusion emitters:
the suite compiles a few hundred small programs and runs each for a few steps, so compile time is
most of its time; unoptimised CPU code compiles in about two thirds of it, and the elemental
emitters cut the suite by a quarter again (docs/DESIGN.md "Test suite"). Results agree with XLA's
default build to float rounding, except that long float32 reductions round differently: a test of
float accuracy itself compiles with :data:`USER_BUILD`. What users run (main.py, the benchmarks,
``-m slow``) keeps XLA's defaults.
"""

TEST_XLA_OPTIONS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"

#: ``compiler_options`` of a jitted function's ``.lower(...).compile(...)`` that restore XLA's
#: defaults (optimisation level 3, the fusion emitters) for one program.
USER_BUILD = {"xla_backend_optimization_level": 3, "xla_cpu_use_fusion_emitters": True}


def xla_flags(devices: int | None = None) -> str:
    """The XLA_FLAGS value of a test subprocess: the test options, ``devices`` simulated CPU devices
    when given."""
    count = f" --xla_force_host_platform_device_count={devices}" if devices else ""
    return TEST_XLA_OPTIONS + count
