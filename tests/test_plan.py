"""benchmarks/plan.py: the capacity planner at tiny scale (a 1-block ViT SoftCon step on 2 and 1
simulated devices; three compilations in all)."""

import math
import os
import sys

import jax
import numpy as np
import pytest
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import plan as planner  # noqa: E402


def tiny_config(global_batch=8):
    path = os.path.join(ROOT, "configs/softcon_vit_s.py:demo")
    config = ConfigFileFlagParser("config").parse(path)
    config.model.update(dict(depth=1, img_size=16))
    config.objective.update(dict(proj_hidden=32, pred_hidden=32, proj_dim=16))
    config.global_batch = global_batch
    return config


@pytest.fixture(scope="module")
def two():
    """The step on 2 devices, compiled at 2 and 4 samples per device (global 4 and 8)."""
    compiler = planner.StepCompiler(tiny_config(), jax.devices()[:2])
    compiler(2), compiler(4)
    return compiler


def sample_bytes(compiler) -> int:
    return sum(math.prod(s.shape) * s.dtype.itemsize for s in compiler.sample.values())


def test_flops_and_memory_are_per_device(two):
    u4 = planner.StepCompiler(tiny_config(), jax.devices()[:1])(4)  # un-sharded, global batch 4
    c2, c4 = two.compiled[2], two.compiled[4]                      # global 4 and 8 on 2 devices
    # 4 samples on each of 2 devices cost what 4 samples cost on one (a global count: twice that);
    # the rest is the loss's (B, B) terms over the global batch and the gradient all-reduce.
    assert c4.flops == pytest.approx(u4.flops, rel=0.03)
    assert c4.flops > c2.flops > 0
    # Arguments: the replicated train state plus this device's rows.
    per_sample = sample_bytes(two)
    assert c4.arguments - c2.arguments == 2 * per_sample
    assert c2.arguments - 2 * per_sample == u4.arguments - 4 * per_sample
    assert c4.total > c2.total


def test_plan_arithmetic_fit_line_and_a_chip_too_small(two):
    config = two.config
    c2, c4 = two.compiled[2], two.compiled[4]
    # HBM between the line's batch 3 and the config's batch 4 per device: it does not fit.
    line_slope = (c4.total - c2.total) / 2
    small = planner.Chip("small", "Small", (c4.total - line_slope / 2) / 0.9, 8e12, 2e12, "f32")
    big = planner.Chip("big", "Big", 1 * planner.GIB, 8e12, 2e12, "f32")
    p = planner.plan(config, jax.devices()[:2], [big, small], mfu=0.5, headroom=0.1, verify=False,
                     compiler=two)
    assert len(two.compiled) == 2  # no compilation without --verify
    assert p.per_device == 4 and p.divisor == 2 and p.cost == c4
    assert p.line.at(2) == pytest.approx(c2.total) and p.line.at(4) == pytest.approx(c4.total)
    by_name = {c.chip.name: c for c in p.chips}
    assert [c.chip.name for c in p.chips] == ["big", "small"]
    assert not by_name["small"].fits and by_name["big"].fits
    small_largest = by_name["small"].largest                # the line's 3.5, not compiled
    assert (small_largest.per_device, small_largest.compiled) == (3, False)
    assert small_largest.memory == pytest.approx(p.line.at(3))
    usable = 0.9 * planner.GIB
    extrapolated = int((usable - (c2.total - 2 * line_slope)) // line_slope)
    assert by_name["big"].largest.per_device == extrapolated and not by_name["big"].largest.compiled
    # float32 config: the chip's f32 peak; epoch = round(examples / batch) steps.
    step_s = c4.flops / (2e12 * 0.5)
    steps = int(np.round(config.num_examples / config.global_batch))
    for c in p.chips:
        assert c.step_s == pytest.approx(step_s)
        assert c.epoch_s == pytest.approx(steps * step_s)
        assert c.run_s == pytest.approx(config.total_steps * step_s)
    assert p.steps_per_epoch == steps
    text = planner.format_plan(p, "tiny")
    assert "Small: the config's batch 8 does not fit" in text
    assert "--config.global_batch=6 or --config.grad_accum_steps=2" in text
    assert f"{extrapolated * 2} ({extrapolated}/device" in text


def fake_measure(calls):
    """Memory of 50 + b + max(50, 3b) bytes at b per device: flat (optimiser peak) below 17."""
    def measure(b):
        calls.append(b)
        return planner.StepCost(b, 50 + b, max(50, 3 * b), 0, 0, 1.0)
    return measure


def test_largest_batch_search_finds_the_boundary_past_the_flat_part():
    calls = []
    measure = fake_measure(calls)
    costs = {4: measure(4), 8: measure(8)}
    found = planner.largest_batch(measure, costs, 1000, 1, tries=5)
    assert found == planner.Largest(237, True, 998)        # 50 + 4·237 <= 1000 < 50 + 4·238
    assert len(calls) - 2 <= 4 and 64 in calls             # growth capped at 8x the largest
    costs = {4: measure(4), 8: measure(8)}
    assert planner.largest_batch(measure, costs, 1000, 2, tries=5).per_device == 236
    # The first line alone (slope 1 in the flat part) would promise far too much.
    assert planner.largest_batch(measure, {4: measure(4), 8: measure(8)}, 1000, 1, 0) \
        == planner.Largest(900, False, 1000)
    calls.clear()
    assert planner.largest_batch(measure, {4: measure(4), 8: measure(8)}, 90, 1, 3) \
        == planner.Largest(0, False, 0.0)
    assert calls[-1] == 1                                   # the smallest batch was compiled


def test_chip_list_and_device_flag(monkeypatch):
    assert [c.name for c in planner.parse_chips("all")] == ["v4", "v5e", "h100"]
    assert [c.name for c in planner.parse_chips("h100, v4")] == ["h100", "v4"]
    with pytest.raises(ValueError, match="--chip: expected"):
        planner.parse_chips("v6")
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_onednn=false")
    planner.simulate_devices(["plan.py", "--devices", "4"])
    assert os.environ["XLA_FLAGS"].endswith("--xla_force_host_platform_device_count=4")
    planner.simulate_devices(["plan.py", "--devices=16"])  # a count already set is kept
    assert "count=16" not in os.environ["XLA_FLAGS"]
    monkeypatch.setenv("XLA_FLAGS", "")
    planner.simulate_devices(["plan.py", "--chip", "v4"])   # the flag's default, 8
    assert os.environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count={planner.DEFAULT_DEVICES}"
    monkeypatch.setenv("XLA_FLAGS", "")
    planner.simulate_devices(["plan.py", "--devices", "0"])  # left to the flag's own check
    assert os.environ["XLA_FLAGS"] == ""
    assert planner.CHIPS["h100"].peak("bfloat16") == 989e12
    assert planner.CHIPS["h100"].peak("float32") == 494.7e12
