"""benchmarks/accelerator.sh runs end to end on the CPU with --dry_run (tiny :demo shapes)."""

import os
import subprocess

from xla_env import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_accelerator_benchmark_dry_run_prints_a_row():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(1))
    done = subprocess.run(["bash", os.path.join(ROOT, "benchmarks/accelerator.sh"), "--dry_run",
                           "--fp32", "--methods", "softcon"], env=env, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("softcon ")]
    assert len(rows) == 1, done.stdout
    name, model, img, batch, compile_s, step_s, images_per_s, tflops, mfu, memory = rows[0][:10]
    assert model == "vit_tiny_patch16" and int(batch) == 1 and mfu == "n/a"
    assert float(step_s) > 0 and float(images_per_s) > 0 and float(memory) > 0
    assert abs(float(images_per_s) * float(step_s) - 1) < 0.05
    assert float(tflops) > 0


def test_unknown_method_is_refused():
    done = subprocess.run(["bash", os.path.join(ROOT, "benchmarks/accelerator.sh"), "--methods",
                           "mae"], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert done.returncode == 2 and "unknown ['mae']" in done.stderr
