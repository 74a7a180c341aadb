"""The shared train step: sharding, FSDP, gradient accumulation, EMA / frozen teachers, optimiser."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import common
from geossl import objectives
from geossl.parallel import mesh as mesh_lib
from geossl.parallel.sharding import tree_shardings
from geossl.train.optim import decay_mask, make_optimizer
from geossl.train.step import make_state, make_train_step


class _Regression(objectives.Objective):
    """A two-layer regression: loss separable over samples, so accumulation must be exact. Its
    extra is a DINO-style centre of the hidden features (EMA of the batch mean, fed back into the
    loss) and a step count."""

    def __init__(self, config, teacher_mode="ema"):
        super().__init__(config)
        self.teacher_spec = objectives.TeacherSpec(teacher_mode, exclude=("b1", "w2"))

    def init(self, rng, batch):
        k1, k2 = jax.random.split(rng)
        d = batch["x"].shape[-1]
        params = {"w1": jax.random.normal(k1, (d, 256)) * 0.1, "b1": jnp.zeros(256),
                  "w2": jax.random.normal(k2, (256, 1)) * 0.1}
        frozen = self.teacher_spec.kind == "frozen"
        teacher = {"params": {"w1": jnp.ones((d, 256))}} if frozen else None
        return objectives.Variables(params=params, teacher=teacher,
                                    extra={"count": jnp.zeros(()), "center": jnp.zeros(256)})

    def loss(self, params, teacher, extra, batch, rng, step):
        h = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
        err = (h @ params["w2"])[:, 0] - batch["y"]
        loss = jnp.mean(err ** 2) + 0.1 * jnp.mean((h - extra["center"]) ** 2)
        center = 0.9 * extra["center"] + 0.1 * jnp.mean(jax.lax.stop_gradient(h), axis=0)
        return loss, {"metrics": {"loss_mse": loss},
                      "extra": {"count": extra["count"] + 1, "center": center}}


def _config(**kw):
    c = ml_collections.ConfigDict(dict(
        total_steps=10, global_batch=16, grad_accum_steps=1,
        optim=common.optim("adamw", weight_decay=0.1, clip_norm=1.0),
        lr=dict(name="warmup_cosine", base=1e-2, warmup_steps=2, final=0.0),
        ema=dict(name="cosine", base=0.9, final=1.0)))
    for key, value in kw.items():  # replace whole sections (ConfigDict.update would merge them)
        c[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
    return c


def _setup(config, mesh_cfg, teacher_mode="ema", fsdp_min=None):
    obj = _Regression(config, teacher_mode)
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(16, 64)).astype(np.float32),
             "y": rng.normal(size=(16,)).astype(np.float32)}
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(mesh_cfg))
    variables = obj.init(jax.random.PRNGKey(0), batch)
    tx, lr_fn = make_optimizer(config, variables.params)
    abstract = jax.eval_shape(lambda v: make_state(obj, tx, v, jax.random.PRNGKey(1)), variables)
    shardings = tree_shardings(abstract, [(".*", "fsdp")], mesh, min_fsdp_size=fsdp_min or 2**14)
    state = jax.jit(lambda v: make_state(obj, tx, v, jax.random.PRNGKey(1)),
                    out_shardings=shardings)(variables)
    step = make_train_step(obj, tx, lr_fn, config, mesh, shardings)
    return obj, state, step, batch, mesh


def test_mesh_shape_resolution_and_errors():
    cfg = ml_collections.ConfigDict(dict(data=-1, fsdp=2, model=1))
    assert mesh_lib.mesh_shape(cfg, 8) == (4, 2, 1)
    with pytest.raises(ValueError, match="at most one axis"):
        mesh_lib.mesh_shape(ml_collections.ConfigDict(dict(data=-1, fsdp=-1, model=1)), 8)
    with pytest.raises(ValueError, match="does not divide"):
        mesh_lib.mesh_shape(ml_collections.ConfigDict(dict(data=-1, fsdp=3, model=1)), 8)
    with pytest.raises(ValueError, match="uses 4 devices"):
        mesh_lib.mesh_shape(ml_collections.ConfigDict(dict(data=2, fsdp=2, model=1)), 8)


def test_fsdp_shards_large_weights_and_optimizer_state():
    _, state, step, batch, mesh = _setup(_config(), dict(data=4, fsdp=2, model=1), fsdp_min=1024)
    w1 = state.params["w1"]  # (64, 256): 16k elements, sharded over fsdp on the 256 axis
    assert {s.data.shape for s in w1.addressable_shards} == {(64, 128)}
    adam = state.opt_state[1][0]  # chain(clip, adamw) -> adamw = chain(scale_by_adam, ...)
    assert {s.data.shape for s in adam.mu["w1"].addressable_shards} == {(64, 128)}
    assert {s.data.shape for s in adam.nu["w1"].addressable_shards} == {(64, 128)}
    assert {s.data.shape for s in state.teacher["params"]["w1"].addressable_shards} == {(64, 128)}
    assert {s.data.shape for s in state.params["b1"].addressable_shards} == {(256,)}  # small: replicated
    state, _ = step(state, batch)  # shardings survive the step
    assert {s.data.shape for s in state.params["w1"].addressable_shards} == {(64, 128)}


def test_step_matches_plain_optax_and_ema_formula():
    config = _config()
    obj, state, step, batch, _ = _setup(config, dict(data=-1, fsdp=1, model=1))
    params0 = jax.device_get(state.params)
    teacher0 = jax.device_get(state.teacher)
    state, metrics = step(state, batch)
    # Reference: the same update computed without the trainer.
    tx, _ = make_optimizer(config, params0)
    loss, grads = jax.value_and_grad(lambda p: obj.loss(p, None, {"count": 0.0, "center": jnp.zeros(256)}, batch, None, 0)[0])(params0)
    updates, _ = tx.update(grads, tx.init(params0), params0)
    expected = optax.apply_updates(params0, updates)
    for k in expected:
        np.testing.assert_allclose(np.asarray(state.params[k]), expected[k], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(metrics["loss"]), float(loss), rtol=1e-6)
    m = 0.9  # cosine 0.9 -> 1.0 at step 0
    np.testing.assert_allclose(float(metrics["momentum"]), m, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(state.teacher["params"]["w1"]),
                               m * teacher0["params"]["w1"] + (1 - m) * np.asarray(state.params["w1"]),
                               rtol=1e-5, atol=1e-6)
    assert int(state.step) == 1 and float(state.extra["count"]) == 1.0
    assert float(metrics["lr"]) == 0.0  # warmup starts at 0


def test_gradient_accumulation_equals_full_batch():
    # SGD with momentum: an update linear in the gradient, so 1e-5 is a fair bar (Adam's
    # normalisation turns float rounding of near-zero gradients into lr-sized differences)
    sgd = dict(optim=common.optim("sgd", weight_decay=0.1, momentum=0.9, clip_norm=1.0),
               lr=dict(name="constant", base=0.5))
    full = _setup(_config(**sgd), dict(data=-1, fsdp=1, model=1))
    accum = _setup(_config(grad_accum_steps=4, **sgd), dict(data=-1, fsdp=1, model=1))
    s1, s2 = full[1], accum[1]
    for _ in range(3):
        s1, m1 = full[2](s1, full[3])
        s2, m2 = accum[2](s2, accum[3])
        np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-5)
        np.testing.assert_allclose(float(m1["grad_norm"]), float(m2["grad_norm"]), rtol=1e-4)
    for k in s1.params:
        np.testing.assert_allclose(np.asarray(s1.params[k]), np.asarray(s2.params[k]), rtol=1e-5, atol=1e-6)
    # the extra state advances once per optimiser step, to the full-batch value
    assert float(s1.extra["count"]) == float(s2.extra["count"]) == 3
    np.testing.assert_allclose(np.asarray(s1.extra["center"]), np.asarray(s2.extra["center"]),
                               rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(s2.extra["center"]).max()) > 1e-3


def test_frozen_teacher_is_never_updated():
    _, state, step, batch, _ = _setup(_config(), dict(data=-1, fsdp=1, model=1), teacher_mode="frozen")
    for _ in range(2):
        state, metrics = step(state, batch)
    np.testing.assert_array_equal(np.asarray(state.teacher["params"]["w1"]), np.ones((64, 256)))
    assert "momentum" not in metrics


def test_one_device_and_eight_devices_agree():
    config = _config()
    a = _setup(config, dict(data=-1, fsdp=1, model=1))
    b = _setup(config, dict(data=4, fsdp=2, model=1), fsdp_min=1024)
    sa, sb = a[1], b[1]
    for _ in range(3):
        sa, ma = a[2](sa, a[3])
        sb, mb = b[2](sb, b[3])
        np.testing.assert_allclose(float(ma["loss"]), float(mb["loss"]), rtol=1e-5)


def test_decay_rules_matrices_all_and_regex():
    params = {"pos_embed": jnp.zeros((1, 5, 8)), "cls_token": jnp.zeros((1, 1, 8)),
              "blocks_0": {"attn": {"qkv": {"kernel": jnp.zeros((8, 24)), "bias": jnp.zeros(24)}}}}
    mask = decay_mask(params, "matrices")
    assert mask["pos_embed"] is False and mask["cls_token"] is False
    assert mask["blocks_0"]["attn"]["qkv"]["kernel"] is True
    assert mask["blocks_0"]["attn"]["qkv"]["bias"] is False
    assert all(jax.tree_util.tree_leaves(decay_mask(params, "all")))
    mask = decay_mask(params, r"regex:(bias|cls_token)$")
    assert mask["pos_embed"] is True and mask["cls_token"] is False
    assert mask["blocks_0"]["attn"]["qkv"]["kernel"] is True
    assert mask["blocks_0"]["attn"]["qkv"]["bias"] is False
    with pytest.raises(ValueError, match="expected 'matrices', 'all' or 'regex:PATTERN', found 'some'"):
        decay_mask(params, "some")


def _sgd_steps(weight_decay, decay, steps=3):
    """Parameters after ``steps`` steps of plain SGD (lr 0.5, momentum 0) with zero gradients:
    only the weight decay moves them."""
    c = _config(total_steps=4, optim=common.optim("sgd", weight_decay=weight_decay, decay=decay,
                                                 momentum=0.0),
                lr=dict(name="constant", base=0.5))
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    tx, _ = make_optimizer(c, params)
    state = tx.init(params)
    for _ in range(steps):
        updates, state = tx.update(jax.tree_util.tree_map(jnp.zeros_like, params), state, params)
        params = optax.apply_updates(params, updates)
    return params


def test_weight_decay_number_or_schedule_on_the_chosen_parameters():
    # constant 0.1 on matrices only: w ← w·(1 − 0.5·0.1) per step, b untouched
    p = _sgd_steps(0.1, "matrices")
    np.testing.assert_allclose(np.asarray(p["w"]), 0.95 ** 3, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(p["b"]), 1.0)
    # linear schedule 0.0 → 0.4 over 4 steps (0, 0.1, 0.2 at steps 0, 1, 2) on every parameter
    p = _sgd_steps(dict(name="linear", base=0.0, final=0.4), "all")
    expected = (1 - 0.5 * 0.0) * (1 - 0.5 * 0.1) * (1 - 0.5 * 0.2)
    np.testing.assert_allclose(np.asarray(p["w"]), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(p["b"]), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="weight_decay: expected >= 0, found -0.1"):
        _sgd_steps(-0.1, "all")


def test_unknown_optimizer_is_named():
    c = _config()
    c.optim.name = "adam"
    with pytest.raises(ValueError, match="expected adamw, lars or sgd, found 'adam'"):
        make_optimizer(c, {"w": jnp.zeros((2, 2))})


def test_non_finite_check_names_the_loss_term_and_step():
    from geossl.train.metrics import NonFiniteLossError, check_finite
    check_finite(3, {"loss": 1.0, "loss_soft": 0.5, "grad_norm": 2.0})
    with pytest.raises(NonFiniteLossError, match="non-finite loss_soft=nan at step 7"):
        check_finite(7, {"loss": 1.0, "loss_soft": float("nan"), "grad_norm": float("inf")})
    with pytest.raises(NonFiniteLossError, match="non-finite loss=inf at step 2"):
        check_finite(2, {"loss": float("inf"), "loss_instance": float("nan")})


def test_warmup_longer_than_the_run_is_cut_to_the_run():
    from geossl.train.optim import lr_schedule
    lr = lr_schedule(_config(total_steps=2, lr=dict(name="warmup_cosine", base=1.0, warmup_steps=610,
                                                    final=0.0)))
    assert float(lr(0)) == 0.0 and float(lr(1)) == pytest.approx(0.5)


def test_config_is_checked_before_anything_is_built():
    from configs import softcon_vit_s
    from geossl.train.config_checks import ConfigError, check_config
    check_config(softcon_vit_s.get_config("demo"))
    cases = {"lr.base": (-0.001, r"config.lr.base: expected >= 0.0, found -0.001"),
             "total_steps": (0, r"config.total_steps: expected >= 1, found 0"),
             "grad_accum_steps": (5, r"config.grad_accum_steps: expected a divisor of global_batch 64"),
             "optim.weight_decay": (-0.1, r"config.optim.weight_decay: expected >= 0.0"),
             "ema.base": (1.5, r"config.ema.base: expected a momentum in \[0, 1\], found 1.5")}
    for path, (value, message) in cases.items():
        c = softcon_vit_s.get_config("demo")
        section, _, key = path.rpartition(".")
        (c[section] if section else c)[key] = value
        with pytest.raises(ConfigError, match=message):
            check_config(c)
    c = softcon_vit_s.get_config("demo")
    c.objective.mask_ratio = 1.5
    with pytest.raises(ValueError, match=r"config.objective.mask_ratio: expected a number in \[0, 1\), found 1.5"):
        objectives.create(c)
    c.objective.mask_ratio, c.objective.name = 0.5, "softconn"
    with pytest.raises(ValueError, match=r"unknown objective 'softconn'; expected one of \[.*'softcon'"):
        objectives.create(c)


def test_third_party_info_lines_are_dropped_by_default():
    import logging
    import os
    from geossl.train import metrics as metrics_lib
    own = metrics_lib.OwnInfoOnly(os.path.dirname(metrics_lib.__file__) + "/..", ("/work/cli/main.py",))

    def record(path, level):
        return logging.LogRecord("absl", level, path, 1, "message", None, None)

    assert own.filter(record(metrics_lib.__file__, logging.INFO))
    assert own.filter(record("/work/cli/main.py", logging.INFO))
    assert not own.filter(record("/venv/site-packages/orbax/checkpoint/manager.py", logging.INFO))
    assert not own.filter(record("/work/cli/.venv/lib/site-packages/grain/x.py", logging.INFO))
    assert own.filter(record("/venv/site-packages/orbax/checkpoint/manager.py", logging.WARNING))


def test_softcon_vit_recipe_decays_what_its_forward_uses_and_the_resnet_recipe_matrices():
    from configs import softcon_rn50, softcon_vit_s
    params = {"pos_embed": jnp.zeros((1, 5, 8)), "cls_token": jnp.zeros((1, 1, 8)),
              "mask_token": jnp.zeros((1, 8)),
              "blocks_0": {"norm1": {"scale": jnp.ones(8), "bias": jnp.zeros(8)},
                           "ls1": {"gamma": jnp.ones(8)},
                           "attn": {"qkv": {"kernel": jnp.zeros((8, 24)), "bias": jnp.zeros(24)}}}}
    vit = softcon_vit_s.get_config().optim
    assert vit.name == "adamw"
    mask = decay_mask(params, vit.decay)
    assert mask.pop("mask_token") is False       # never in the sparse forward: no update at all
    assert all(jax.tree_util.tree_leaves(mask))  # MoCo v3: AdamW(model.parameters())
    rn = softcon_rn50.get_config().optim
    assert rn.name == "lars" and rn.decay == "matrices"   # MoCo v3's LARS skips 1-D parameters
