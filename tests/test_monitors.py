"""Collapse monitor (geossl.eval.health, geossl.eval.monitor): the figures against plain numpy
formulas, the hook's warning, and the trainer forced to collapse (lr 10) vs a healthy run."""

import glob
import itertools
import logging
import os
import re
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geossl import models
from geossl.errors import ConfigError
from geossl.eval import health, monitor
from geossl.train import loop
from test_engine_run import read_metrics, tiny_config

WARNING = "embeddings collapsing"


# ----- independent references ---------------------------------------------------------------------
def std_by_loops(x):
    """Mean over dimensions of the population std of each dimension of the unit rows."""
    rows = [[v / max(sum(u * u for u in row) ** 0.5, 1e-12) for v in row] for row in x.tolist()]
    return statistics.fmean(statistics.pstdev(col) for col in zip(*rows))


def rankme_by_gram(x, eps=1e-7):
    """RankMe with σ² the eigenvalues of the smaller Gram matrix (no SVD)."""
    x = np.asarray(x, np.float64)
    gram = x.T @ x if x.shape[0] >= x.shape[1] else x @ x.T
    sigma = np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None))
    p = sigma / sigma.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def cosine_by_pairs(x):
    """Mean cosine over ordered pairs i != j, one pair at a time."""
    x = np.asarray(x, np.float64)
    cos = [x[i] @ x[j] / (np.linalg.norm(x[i]) * np.linalg.norm(x[j]))
           for i, j in itertools.permutations(range(len(x)), 2)]
    return float(np.mean(cos))


def embeddings(kind, n=40, d=24, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "random":      # non-centred, anisotropic: a mean plus scaled Gaussians
        return rng.normal(size=(n, d)) * rng.uniform(0.2, 3.0, size=d) + rng.normal(size=d)
    if kind == "rank1":       # every row a multiple (either sign) of one direction
        return np.outer(rng.normal(size=n), rng.normal(size=d))
    if kind == "rank3":
        return rng.normal(size=(n, 3)) @ rng.normal(size=(3, d))
    return np.tile(rng.normal(size=d), (n, 1))  # "constant": full collapse


# ----- the figures --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["random", "rank1", "rank3", "constant"])
def test_figures_match_numpy_references(kind):
    x = embeddings(kind)
    figures = health.collapse_figures(x.astype(np.float32))
    assert figures["monitor/embedding_std"] == pytest.approx(std_by_loops(x), rel=1e-5, abs=1e-7)
    assert figures["monitor/embedding_std_ratio"] == pytest.approx(
        std_by_loops(x) * np.sqrt(24), rel=1e-5, abs=1e-6)
    assert figures["monitor/rankme"] == pytest.approx(rankme_by_gram(x), rel=1e-4)
    assert figures["monitor/mean_cosine"] == pytest.approx(cosine_by_pairs(x), abs=1e-6)


def test_figures_read_collapse_and_spread():
    rng = np.random.default_rng(1)
    constant, rank1, rank3 = (health.collapse_figures(embeddings(k)) for k in
                              ("constant", "rank1", "rank3"))
    assert constant["monitor/embedding_std"] < 1e-7 and constant["monitor/mean_cosine"] == (
        pytest.approx(1.0))
    assert constant["monitor/rankme"] == pytest.approx(1.0, abs=1e-4)
    assert rank1["monitor/rankme"] == pytest.approx(1.0, abs=1e-4)
    assert 1.5 < rank3["monitor/rankme"] <= 3.0
    # Orthogonal rows of equal length: RankMe = their count; the cosine of distinct pairs 0.
    eye = health.collapse_figures(np.eye(16) * 5.0)
    assert eye["monitor/rankme"] == pytest.approx(16.0, rel=1e-4)
    assert eye["monitor/mean_cosine"] == pytest.approx(0.0, abs=1e-12)
    # Isotropic Gaussian embeddings: std ≈ 1/sqrt(D), so the ratio ≈ 1 whatever D.
    for d in (16, 128):
        spread = health.collapse_figures(rng.normal(size=(2000, d)))
        assert spread["monitor/embedding_std_ratio"] == pytest.approx(1.0, abs=0.02), d
        assert abs(spread["monitor/mean_cosine"]) < 0.01
    zeros = health.collapse_figures(np.zeros((8, 4)))  # a dead network: no NaN
    assert zeros["monitor/embedding_std"] == 0.0 and zeros["monitor/mean_cosine"] == 0.0
    with pytest.raises(ValueError, match=re.escape("expected embeddings (N, D) with N >= 2, "
                                                   "found shape (1, 4)")):
        health.rankme(np.ones((1, 4)))


# ----- the hook -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_vit():
    model = models.create("vit_tiny_patch16", img_size=16, patch_size=8, depth=1, in_chans=3)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    images = np.random.default_rng(0).normal(size=(24, 16, 16, 3)).astype(np.float32)
    return model, variables, images


def _collapsed(variables):
    """The same backbone with the final norm's scale zeroed: every embedding is its bias."""
    params = jax.tree_util.tree_map(lambda a: a, variables["params"])
    params["norm"] = dict(params["norm"], scale=jnp.zeros_like(params["norm"]["scale"]),
                          bias=jnp.linspace(-1.0, 1.0, params["norm"]["bias"].shape[0]))
    return {"params": params}


def test_hook_figures_and_one_warning_per_fall(tiny_vit, caplog):
    model, variables, images = tiny_vit
    hook = monitor.CollapseMonitor(model, images, every=5, std_ratio_threshold=0.05)
    caplog.set_level(logging.INFO)
    healthy = hook(5, variables)
    direct = np.asarray(model.apply(variables, jnp.asarray(images))["embedding"])
    for name, value in health.collapse_figures(direct).items():
        assert healthy[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    assert healthy["monitor/time_s"] > 0
    assert healthy["monitor/embedding_std_ratio"] > 0.05
    collapsed = _collapsed(variables)
    for step in (10, 15):  # stays collapsed: one line
        assert hook(step, collapsed)["monitor/embedding_std_ratio"] < 1e-3
    hook(20, variables)     # recovers; falls again: a second line
    hook(25, collapsed)
    lines = [r for r in caplog.records if WARNING in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.WARNING] * 2
    assert lines[0].getMessage().startswith("step 10: ") and "step 25: " in lines[1].getMessage()
    assert "config.monitor.std_ratio_threshold 0.05" in lines[0].getMessage()


def test_make_monitor_reads_config_and_fixed_batch(tmp_path):
    from data_prep import synthetic
    from configs import softcon_vit_s
    out = str(tmp_path / "data")
    synthetic.generate(out, num_locations=16, heldout=0, size=16, seasons=2, num_shards=2)
    c = tiny_config(os.path.join(out, "train-*.tfrecord"))
    c.monitor.num_examples = 10
    assert softcon_vit_s.get_config("demo").monitor.every == -1
    c.monitor.every = 0
    assert monitor.make_monitor(c) is None
    c.monitor.every = -1  # every log_every steps
    c.log_every = 3
    first = monitor.make_monitor(c)
    assert first.every == 3 and first.images.shape == (10, 16, 16, 13)
    # No held-out shards: training records drawn with a fixed seed, the same every time.
    records, where = monitor.monitor_records(c)
    assert "training records" in where and len({r["key"] for r in records}) == 10
    np.testing.assert_array_equal(monitor.make_monitor(c).images, first.images)
    # Held-out shards beside the training shards come first.
    synthetic.generate(str(tmp_path / "held"), num_locations=4, heldout=12, size=16, seasons=2,
                       num_shards=1)
    c.monitor.data = str(tmp_path / "held" / "heldout-*.tfrecord")
    records, where = monitor.monitor_records(c)
    assert "heldout" in where and len(records) == 10
    for field, value, expected in (("every", -2, "an integer in [-1, inf)"),
                                   ("num_examples", 1, "an integer in [2, inf)"),
                                   ("std_ratio_threshold", -0.5, "a number in [0, inf)")):
        bad = tiny_config(os.path.join(out, "train-*.tfrecord"), **{"monitor.every": -1})
        bad.monitor[field] = value
        message = f"config.monitor.{field}: expected {expected}"
        with pytest.raises(ConfigError, match=re.escape(message)):
            monitor.make_monitor(bad)


# ----- the trainer --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from data_prep import synthetic
    out = str(tmp_path_factory.mktemp("synthetic"))
    synthetic.generate(out, num_locations=32, heldout=16, size=16, seasons=2, num_shards=2)
    return os.path.join(out, "train-*.tfrecord")


LR = 20.0


def test_training_run_warns_once_when_forced_to_collapse(shards, tmp_path, caplog):
    """One run whose lr warms up to 20 in 2 steps (0, 10, 20, ...): healthy after its first step
    (no warning), collapsed from the third (one warning, not one per step)."""
    config = tiny_config(shards, **{"total_steps": 4, "log_every": 1, "checkpoint_every": 4,
                                    "lr.base": LR, "lr.warmup_steps": 2, "export.torch": False})
    config.monitor.update(dict(every=-1, num_examples=16,   # every log_every (1) steps
                               std_ratio_threshold=0.04))
    hook = monitor.make_monitor(config)
    caplog.set_level(logging.INFO)
    loop.run(config, str(tmp_path / "run"), jax.devices()[:1], hooks=[hook])  # 1: compiles faster
    rows = read_metrics(str(tmp_path / "run"))
    assert [r["step"] for r in rows if "monitor/rankme" in r] == [1, 2, 3, 4]
    assert [r["lr"] for r in rows[:3]] == pytest.approx([0.0, LR / 2, LR])
    ratios = [r["monitor/embedding_std_ratio"] for r in rows]
    threshold = config.monitor.std_ratio_threshold
    assert ratios[0] > 3 * threshold and max(ratios[2:]) < threshold, ratios
    assert rows[0]["monitor/mean_cosine"] < 0.99 and rows[-1]["monitor/mean_cosine"] > 0.999
    assert 1.0 <= rows[-1]["monitor/rankme"] < 1.5 < rows[0]["monitor/rankme"] <= 16
    (events,) = glob.glob(str(tmp_path / "run" / "tensorboard" / "events.*"))
    assert b"monitor/embedding_std_ratio" in open(events, "rb").read()  # a TensorBoard scalar too
    warnings = [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]
    first_low = next(r["step"] for r in rows if r["monitor/embedding_std_ratio"] < threshold)
    assert len(warnings) == 1 and warnings[0].startswith(f"step {first_low}: "), warnings
