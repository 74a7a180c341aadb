"""configs/anysensor_vit_b.py: one DOFA encoder trained by SoftCon on S2, S1 and cross-sensor
batches (config.data.sets; the stream and its resume: tests/test_band_sets.py), its checks before
anything runs."""

import os

import numpy as np
import pytest

from configs import anysensor_vit_b
from geossl.data import band_sets
from geossl.errors import ConfigError
from geossl.train import loop
from test_engine_run import read_metrics

TINY = {"model.depth": 1, "model.img_size": 16, "model.patch_size": 8, "model.embed_dim": 32,
        "model.num_heads": 2, "objective.proj_hidden": 32, "objective.proj_dim": 16,
        "objective.pred_hidden": 32, "global_batch": 8, "total_steps": 4, "checkpoint_every": 2,
        "log_every": 1, "lr.warmup_steps": 1, "probe.every": 0, "monitor.every": 0}


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    from geossl.data import synthetic
    out = str(tmp_path_factory.mktemp("s1s2"))
    synthetic.generate(out, num_locations=24, heldout=8, size=16, seasons=2, num_shards=1,
                       modality="both", verbose=False)
    return out


def _config(folder, **overrides):
    c = anysensor_vit_b.get_config("demo")
    c.data.sets.s2.train = os.path.join(folder, "train-*.tfrecord")
    c.data.sets.s1.train = os.path.join(folder, "s1-train-*.tfrecord")
    c.data.train = c.data.sets.s2.train
    for key, value in dict(TINY, **overrides).items():
        *parents, leaf = key.split(".")
        node = c
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def test_mixed_sensor_run_compiles_once_per_batch_kind(both, tmp_path, caplog):
    """Seed 5 draws paired, paired, then S2 batches: two compiles, the first reused; a resume
    with another global batch is refused (the set draws are per global batch)."""
    caplog.set_level("INFO")
    config = _config(both, seed=5, total_steps=3)
    sets = band_sets.from_config(config)
    schedule = band_sets.SetSchedule([s.weight for s in sets], int(config.seed))
    assert [sets[schedule(k)[0]].name for k in range(3)] == ["s2_s1", "s2_s1", "s2"]
    workdir = str(tmp_path / "run")
    loop.run(config, workdir)
    compiled = [r for r in caplog.records if r.getMessage().startswith("compiled the train step")]
    assert len(compiled) == 2
    rows = read_metrics(workdir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert np.isfinite([r["loss"] for r in rows]).all()
    assert ["compile_s" in r for r in rows] == [True, False, True]
    before = open(os.path.join(workdir, "metrics.jsonl")).read()
    with pytest.raises(ConfigError, match=r"resumes with the global batch that wrote it, 8; "
                                          r"found 16"):
        loop.run(_config(both, seed=5, global_batch=16, total_steps=6), workdir)
    assert open(os.path.join(workdir, "metrics.jsonl")).read() == before


def test_mixed_sets_are_checked_before_anything_runs(both, tmp_path):
    fixed = _config(both, **{"model.name": "vit_tiny_patch16"})
    with pytest.raises(ConfigError, match=r"sets with different bands .* need a wavelength-"):
        loop.run(fixed, str(tmp_path / "fixed"))
    assert not os.path.exists(tmp_path / "fixed" / "config.json")


def test_band_sets_render_views_on_the_host():
    from geossl import objectives
    c = anysensor_vit_b.get_config("demo")
    c.data.views = "auto"
    assert not objectives.create(c).views_on_device
    c.data.views = "device"
    with pytest.raises(ConfigError, match=r"config.data.views: expected 'host' or 'auto' with "
                                          r"config.data.sets .* found 'device'"):
        objectives.create(c)
