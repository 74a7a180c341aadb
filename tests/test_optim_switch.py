"""--config.optim.name switches the optimiser section on the command line; each optimiser takes
its own fields only (one ConfigError line otherwise)."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import common, softcon_vit_s
from geossl.errors import ConfigError
from geossl.train.config_checks import check_config
from geossl.train.optim import OPTIMIZER_FIELDS, make_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = f"--config={ROOT}/configs/softcon_vit_s.py:demo"


def _switched(*flags):
    c = softcon_vit_s.get_config("demo")
    c.lock()
    return common.switch_optim_from_argv(c, ["main.py", CONFIG, *flags])


def test_trainer_and_configs_name_the_same_fields():
    assert {k: tuple(v) for k, v in common.OPTIMIZER_FIELDS.items()} == OPTIMIZER_FIELDS


def test_switch_keeps_the_shared_fields_and_takes_the_new_defaults():
    assert softcon_vit_s.get_config("demo").optim.name == "adamw"
    c = _switched("--config.optim.name=sgd", "--config.optim.momentum=0.7")
    assert c.optim.to_dict() == dict(name="sgd", weight_decay=0.05, decay="matrices",
                                     clip_norm=1.0, momentum=0.9)  # the override applies next
    check_config(c)
    c = _switched("--config.optim.name", "lars")
    assert c.optim.to_dict() == dict(name="lars", weight_decay=0.05, decay="matrices",
                                     clip_norm=1.0, momentum=0.9, trust_coefficient=0.001)
    assert _switched("--config.optim.b2=0.9").optim.name == "adamw"  # no switch asked


@pytest.mark.parametrize("flags, message", [
    (("--config.optim.name=sgd", "--config.optim.b1=0.8"),
     "config.optim.b1: a field of adamw, not of optim.name='sgd', which takes ['momentum']"),
    (("--config.optim.momentum=0.9",),
     "config.optim.momentum: a field of lars, sgd, not of optim.name='adamw', which takes "
     "['b1', 'b2', 'eps']"),
])
def test_another_optimisers_field_is_one_config_error(flags, message):
    with pytest.raises(ConfigError) as error:
        _switched(*flags)
    assert str(error.value) == message


def test_trainer_refuses_a_section_of_another_optimiser():
    c = softcon_vit_s.get_config("demo")
    c.optim.name = "sgd"  # the adamw fields stay: the Python API did not switch the section
    with pytest.raises(ConfigError, match=r"config.optim.b1: not a field of optim.name='sgd', "
                                          r"which takes \['momentum'\]"):
        check_config(c)
    c.optim = ml_collections.ConfigDict(dict(name="lars", weight_decay=0.0, decay="all",
                                             clip_norm=0.0, momentum=0.9))
    with pytest.raises(ConfigError, match=r"config.optim.trust_coefficient: missing"):
        check_config(c)


def test_switched_section_builds_sgd_with_momentum():
    """Two steps of the switched optimiser against SGD + momentum + decoupled-in-gradient decay
    written out in numpy (an AdamW would move the weights by ~lr per step instead)."""
    c = _switched("--config.optim.name=sgd")
    c.optim.momentum = 0.7
    c.lr = ml_collections.ConfigDict(dict(name="constant", base=0.5))
    params = {"w": jnp.ones((2, 2))}
    tx, _ = make_optimizer(c, params)
    state = tx.init(params)
    g = np.full((2, 2), 0.1)  # global norm 0.2: under clip_norm 1.0
    w, m = np.ones((2, 2)), np.zeros((2, 2))
    for _ in range(2):
        updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
        params = optax.apply_updates(params, updates)
        m = (g + 0.05 * w) + 0.7 * m
        w = w - 0.5 * m
    np.testing.assert_allclose(np.asarray(params["w"]), w, rtol=1e-6)


def _main_py(*flags):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), CONFIG, *flags],
                          env=env, capture_output=True, text=True, timeout=120)


def test_main_py_switches_then_overrides():
    """The pre-pass runs inside main.py's flag parsing: the switched section's own field is then a
    valid override (parsed only: nothing is trained)."""
    code = ("import json, sys; sys.argv = sys.argv[1:]; import main; main.parse_flags(sys.argv); "
            "print(json.dumps(main.FLAGS.config.optim.to_dict(), sort_keys=True))")
    done = subprocess.run([sys.executable, "-c", code, os.path.join(ROOT, "main.py"), CONFIG,
                           "--workdir=/nonexistent", "--config.optim.name=sgd",
                           "--config.optim.momentum=0.7"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout) == dict(name="sgd", weight_decay=0.05, decay="matrices",
                                           clip_norm=1.0, momentum=0.7)
    done = _main_py("--workdir=/nonexistent", "--config.optim.name=sgd", "--config.optim.eps=1e-6")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "main.py: config.optim.eps: a field of adamw, not of optim.name='sgd', which takes "
        "['momentum']"]


def test_lars_is_moco_v3s_with_a_changing_learning_rate():
    """MoCo v3's LARS, transcribed in torch: matrices get weight decay and the trust ratio, 1-D
    parameters neither; the momentum trace runs on those steps and the lr multiplies it after
    (optax.lars multiplies before, which this test fails). Six steps of a warmup lr."""
    torch = pytest.importorskip("torch")
    c = softcon_vit_s.get_config("demo")
    c.optim = common.optim("lars", weight_decay=1e-2, momentum=0.9)
    c.lr = common.warmup_cosine(0.6, 6, 0.0)
    c.total_steps = 12
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(4, 3)).astype(np.float32),
              "b": rng.normal(size=(3,)).astype(np.float32)}
    grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
             for _ in range(6)]
    tx, lr_fn = make_optimizer(c, params)
    state, ours = tx.init(params), {k: jnp.asarray(v) for k, v in params.items()}
    for g in grads:
        updates, state = tx.update({k: jnp.asarray(v) for k, v in g.items()}, state, ours)
        ours = optax.apply_updates(ours, updates)
    ref = {k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()}
    mu = {k: torch.zeros_like(v) for k, v in ref.items()}
    for step, g in enumerate(grads):
        lr = float(lr_fn(step))
        for k, p in ref.items():
            dp = torch.tensor(g[k], dtype=torch.float64)
            if p.ndim > 1:   # MoCo v3's optimizer.LARS.step
                dp = dp.add(p, alpha=1e-2)
                param_norm, update_norm = torch.norm(p), torch.norm(dp)
                one = torch.ones_like(param_norm)
                q = torch.where(param_norm > 0.,
                                torch.where(update_norm > 0, 0.001 * param_norm / update_norm, one),
                                one)
                dp = dp.mul(q)
            mu[k].mul_(0.9).add_(dp)
            p.add_(mu[k], alpha=-lr)
    for k in params:
        np.testing.assert_allclose(np.asarray(ours[k]), ref[k].numpy(), rtol=1e-5, atol=1e-7)
