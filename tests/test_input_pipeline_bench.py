"""benchmarks/input_pipeline.py at a tiny size: every row is measured, grain with a worker included,
and the worker ratio line is printed over the rounds; its timing window starts after each worker's
shared-memory blocks are in use (their first use zeroes fresh pages, a one-off of a run)."""

import os
import re
import subprocess
import sys

import xla_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import input_pipeline  # noqa: E402

from geossl.data import shared_batches  # noqa: E402


def test_warm_up_covers_every_workers_blocks():
    assert input_pipeline.warmup_batches(0) == 1
    assert input_pipeline.warmup_batches(2) == 1 + 2 * shared_batches.MAX_BLOCKS


def test_tiny_run_prints_every_row_and_the_worker_ratios():
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "input_pipeline.py"), "--records", "4",
           "--seasons", "2", "--size", "40", "--img", "32", "--workers", "1,0", "--batch", "2",
           "--batches", "2", "--samples", "4", "--methods", "", "--step_model", "",
           "--rounds", "2"]
    env = {**os.environ, "XLA_FLAGS": xla_env.xla_flags(), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rates = {}
    for line in out.stdout.splitlines():
        m = re.match(r"(\S.*?)\s{2,}(\S+)\s+([\d.]+)\s+([\d.]+|-)$", line)
        if m:
            rates[(m.group(1), m.group(2))] = float(m.group(3))
    for row in [("decode (records)", "-"), ("two-view + decode", "-"),
                ("raw two-view + decode", "-"), ("grain host views", "0"),
                ("grain host views", "1"), ("grain device views", "0"),
                ("grain device views", "1"), ("device render (jit)", "-")]:
        assert rates.get(row, 0) > 0, (row, out.stdout)
    ratio = re.search(r"in-process per-core rate \(median \(min-max\) of 2 rounds\): 1 worker "
                      r"([\d.]+)x \(([\d.]+)-([\d.]+); target 0\.8x\)", out.stdout)
    assert ratio, out.stdout
    median, low, high = map(float, ratio.groups())
    assert 0 < low <= median <= high, ratio.group(0)
    assert re.search(r"grain's per-core rate without workers .*: 1 worker [\d.]+x", out.stdout)
