"""geossl.train.schedules against explicit formulas, at boundaries, under jit and inside optax."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from geossl import schedules


def np_warmup_cosine(s, base, total, warmup, final, init):
    if s < warmup:
        return init + (base - init) * s / warmup
    if s >= total:
        return final
    t = (s - warmup) / (total - warmup)
    return final + (base - final) * 0.5 * (1 + math.cos(math.pi * t))


STEPS = [0, 1, 5, 9, 10, 11, 37, 54, 99, 100, 101, 1000]


def values(fn, steps=STEPS):
    """The schedule at every step, once under jit with a traced int32 step."""
    out = jax.jit(jax.vmap(fn))(jnp.asarray(steps, jnp.int32))
    assert out.dtype == jnp.float32
    return np.asarray(out)


def test_warmup_cosine_matches_formula():
    kw = dict(base=1e-3, total_steps=100, warmup_steps=10, final=1e-5, warmup_init=1e-6)
    got = values(lambda s: schedules.warmup_cosine(s, **kw))
    want = [np_warmup_cosine(s, 1e-3, 100, 10, 1e-5, 1e-6) for s in STEPS]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
    assert got[STEPS.index(0)] == np.float32(1e-6)  # warmup_init at 0
    assert got[STEPS.index(10)] == np.float32(1e-3)  # base at the end of the warmup
    assert got[STEPS.index(100)] == np.float32(1e-5) == got[-1]  # final at total and beyond
    # eager with a Python int, a float32 scalar out
    v = schedules.warmup_cosine(55, **kw)
    assert v.dtype == jnp.float32 and v.shape == ()
    np.testing.assert_allclose(float(v), np_warmup_cosine(55, 1e-3, 100, 10, 1e-5, 1e-6), rtol=1e-6)


def test_warmup_cosine_edge_cases_and_optax_equivalence():
    no_warm = values(lambda s: schedules.warmup_cosine(s, base=2.0, total_steps=100))
    np.testing.assert_allclose(no_warm, [np_warmup_cosine(s, 2.0, 100, 0, 0.0, 0.0) for s in STEPS],
                               rtol=1e-6, atol=1e-6)
    assert no_warm[0] == 2.0
    # warmup over the whole run: linear to base, then final
    all_warm = values(lambda s: schedules.warmup_cosine(s, base=1.0, total_steps=10,
                                                        warmup_steps=10, final=0.5), [0, 5, 10, 11])
    np.testing.assert_allclose(all_warm, [0.0, 0.5, 1.0, 0.5], rtol=1e-6)
    ref = optax.warmup_cosine_decay_schedule(init_value=1e-6, peak_value=1e-3, warmup_steps=10,
                                             decay_steps=100, end_value=1e-5)
    got = values(lambda s: schedules.warmup_cosine(s, base=1e-3, total_steps=100, warmup_steps=10,
                                                   final=1e-5, warmup_init=1e-6))
    np.testing.assert_allclose(got, [float(ref(s)) for s in STEPS], rtol=1e-5)
    with pytest.raises(ValueError, match="warmup_steps=20 is larger than total_steps=10"):
        schedules.warmup_cosine(0, base=1.0, total_steps=10, warmup_steps=20)


def test_cosine_for_ema_momentum_and_weight_decay():
    mom = values(lambda s: schedules.cosine(s, base=0.99, final=1.0, total_steps=100))
    np.testing.assert_allclose(mom, [np_warmup_cosine(s, 0.99, 100, 0, 1.0, 0.0) for s in STEPS],
                               rtol=1e-7)
    assert mom[0] == np.float32(0.99) and mom[STEPS.index(100)] == 1.0 and mom[-1] == 1.0
    assert (np.diff(mom) >= 0).all()
    wd = values(lambda s: schedules.cosine(s, base=0.04, final=0.2, total_steps=100))
    np.testing.assert_allclose(wd[STEPS.index(54)], 0.2 + (0.04 - 0.2) * 0.5 * (1 + math.cos(
        math.pi * 0.54)), rtol=1e-6)


def test_linear_then_constant():
    got = values(lambda s: schedules.linear(s, start=0.03, end=0.05, steps=30),
                 [0, 15, 29, 30, 31, 500])
    want = [0.03, 0.04, 0.03 + 0.02 * 29 / 30, 0.05, 0.05, 0.05]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    got = values(lambda s: schedules.linear(s, start=1.0, end=2.0, steps=0), [0, 9])
    np.testing.assert_allclose(got, [2.0, 2.0])


def test_make_schedule_dispatch():
    lr = schedules.make_schedule(dict(name="warmup_cosine", base=1e-3, warmup_steps=10, final=1e-5,
                                      total_steps=100))
    want = [np_warmup_cosine(s, 1e-3, 100, 10, 1e-5, 0.0) for s in STEPS]
    np.testing.assert_allclose(values(lr), want, rtol=1e-6, atol=1e-12)
    const = schedules.make_schedule(dict(name="constant", base=0.5, total_steps=100))
    np.testing.assert_array_equal(values(const), np.full(len(STEPS), 0.5, np.float32))
    mom = schedules.make_schedule(dict(name="cosine", base=0.992, final=1.0, total_steps=100))
    want = [np_warmup_cosine(s, 0.992, 100, 0, 1.0, 0.0) for s in STEPS]
    np.testing.assert_allclose(values(mom), want, rtol=1e-7)
    temp = schedules.make_schedule(dict(name="linear", start=0.03, end=0.05, steps=30,
                                        total_steps=100))
    np.testing.assert_allclose(values(temp, [0, 15, 30, 99]), [0.03, 0.04, 0.05, 0.05], rtol=1e-6)
    # the uniform spelling: base/final, steps from total_steps
    temp2 = schedules.make_schedule(dict(name="linear", base=0.03, final=0.05, total_steps=30))
    np.testing.assert_allclose(values(temp2, [0, 15, 30, 99]), [0.03, 0.04, 0.05, 0.05], rtol=1e-6)


def test_make_schedule_accepts_config_dict():
    ml_collections = pytest.importorskip("ml_collections")
    cfg = ml_collections.ConfigDict(dict(name="cosine", base=0.99, final=1.0, total_steps=10))
    np.testing.assert_allclose(float(schedules.make_schedule(cfg)(10)), 1.0)


def test_make_schedule_errors():
    with pytest.raises(ValueError, match=r"unknown schedule name 'step'; expected one of \["):
        schedules.make_schedule(dict(name="step", base=1.0))
    with pytest.raises(ValueError, match=r"schedule 'warmup_cosine': unknown keys \['warmup'\]"):
        schedules.make_schedule(dict(name="warmup_cosine", base=1.0, total_steps=10, warmup=2))
    with pytest.raises(ValueError, match=r"schedule 'cosine': missing keys \['final'\]"):
        schedules.make_schedule(dict(name="cosine", base=1.0, total_steps=10))
    with pytest.raises(ValueError, match=r"schedule 'linear': missing keys \['steps'\]"):
        schedules.make_schedule(dict(name="linear", start=1.0, end=2.0))
    with pytest.raises(ValueError, match="give 'start' or 'base', not both"):
        schedules.make_schedule(dict(name="linear", start=1.0, base=1.0, end=2.0, steps=3))
    with pytest.raises(ValueError, match="total_steps must be a whole number of steps, found 10.5"):
        schedules.make_schedule(dict(name="cosine", base=1.0, final=0.0, total_steps=10.5))
    with pytest.raises(ValueError, match="warmup_steps=20 is larger than total_steps=10"):
        schedules.make_schedule(dict(name="warmup_cosine", base=1.0, total_steps=10,
                                     warmup_steps=20))


def test_optax_consumes_make_schedule():
    lr = schedules.make_schedule(dict(name="warmup_cosine", base=0.1, warmup_steps=2, total_steps=6,
                                      final=0.01))
    tx = optax.sgd(lr)
    params = jnp.zeros(())
    state = tx.init(params)
    grad = jnp.ones(())

    @jax.jit
    def step(params, state):
        updates, state = tx.update(grad, state, params)
        return optax.apply_updates(params, updates), state

    seen = []
    for _ in range(8):
        new, state = step(params, state)
        seen.append(float(params - new))  # the learning rate used at this step (grad = 1)
        params = new
    np.testing.assert_allclose(seen, [np_warmup_cosine(s, 0.1, 6, 2, 0.01, 0.0) for s in range(8)],
                               rtol=1e-5, atol=1e-7)
    # adamw with the schedule also for its own injected hyperparameters
    tx2 = optax.inject_hyperparams(optax.adamw)(learning_rate=lr, weight_decay=0.05)
    s2 = tx2.init({"w": jnp.ones((2, 2))})
    np.testing.assert_allclose(float(s2.hyperparams["learning_rate"]), 0.0)


def _official_pera_teacher_temp(it, start, end, warmup):
    """PerA's teacher temperature (Utils/builder.py: CosineScheduler with warmup_iters = total_iters
    = W): np.linspace(start, end, W)[it] for it < W, then the final value."""
    return np.linspace(start, end, warmup)[it] if it < warmup else end


@pytest.mark.parametrize("warmup", [30, 2, 1, 0])
def test_linspace_is_pera_official_teacher_temperature(warmup):
    steps = [0, 1, 2, 15, 28, 29, 30, 31, 500]
    got = values(lambda s: schedules.linspace(s, start=0.03, end=0.05, steps=warmup), steps)
    want = [_official_pera_teacher_temp(s, 0.03, 0.05, warmup) for s in steps]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    if warmup > 1:  # the formula: 0.03 + 0.02 · it / (W − 1) for it < W
        ramp = [s for s in steps if s < warmup]
        np.testing.assert_allclose(got[:len(ramp)], [0.03 + 0.02 * s / (warmup - 1) for s in ramp],
                                   rtol=1e-6)
    if warmup == 30:  # "linear" is one step behind: 0.05 only at step 30, not 29
        linear = values(lambda s: schedules.linear(s, start=0.03, end=0.05, steps=30), [29])
        assert abs(float(linear[0]) - 0.05) > 5e-4 and abs(float(got[steps.index(29)]) - 0.05) < 1e-8


def test_make_schedule_linspace():
    temp = schedules.make_schedule(dict(name="linspace", start=0.03, end=0.05, steps=30,
                                        total_steps=100))
    np.testing.assert_allclose(values(temp, [0, 1, 29, 30, 99]),
                               [0.03, 0.03 + 0.02 / 29, 0.05, 0.05, 0.05], rtol=1e-6)
    assert temp.config == dict(name="linspace", start=0.03, end=0.05, steps=30)
    temp2 = schedules.make_schedule(dict(name="linspace", base=0.03, final=0.05, total_steps=30))
    np.testing.assert_allclose(values(temp2, [0, 29]), [0.03, 0.05], rtol=1e-6)
    with pytest.raises(ValueError, match="schedule 'linspace': give 'end' or 'final', not both"):
        schedules.make_schedule(dict(name="linspace", start=0.0, end=1.0, final=1.0, steps=3))
    with pytest.raises(ValueError, match="schedule 'linspace': steps must be >= 0, found -1"):
        schedules.make_schedule(dict(name="linspace", start=0.0, end=1.0, steps=-1))
    with pytest.raises(ValueError, match="linspace: steps must be an int >= 0, found 2.5"):
        schedules.linspace(0, start=0.0, end=1.0, steps=2.5)


def _official_pera_lr(it, base, final, warmup, total, start=0.0):
    """PerA's / DINO's cosine_scheduler per iteration: np.linspace(start, base, W) for the warmup,
    then final + ½(base − final)(1 + cos(π i / (T − W))) over i = 0 .. T − W − 1; final after."""
    warm = np.linspace(start, base, warmup)
    iters = np.arange(total - warmup)
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    schedule = np.concatenate([warm, cos])
    return schedule[it] if it < total else final


def test_warmup_cosine_linspace_warmup_is_peras_lr():
    steps = [0, 1, 9, 10, 11, 40, 99, 100, 150]
    got = values(lambda s: schedules.warmup_cosine(s, base=1e-3, total_steps=100, warmup_steps=10,
                                                   final=1e-6, warmup_shape="linspace"), steps)
    want = [_official_pera_lr(s, 1e-3, 1e-6, 10, 100) for s in steps]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_warmup_cosine_from_step0_is_timm_cosine_lr_scheduler():
    """GFM's (SimMIM's) scheduler: timm's CosineLRScheduler(t_initial=T, warmup_t=W, cycle_limit=1,
    t_in_epochs=False), no warmup_prefix: the cosine runs over s / T, the warmup over its start."""
    torch = pytest.importorskip("torch")
    scheduler_lib = pytest.importorskip("timm.scheduler.cosine_lr")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2e-4)
    timm_sched = scheduler_lib.CosineLRScheduler(optimizer, t_initial=100, lr_min=1e-5,
                                                 warmup_lr_init=1e-6, warmup_t=10, cycle_limit=1,
                                                 t_in_epochs=False)
    steps = [0, 1, 5, 9, 10, 11, 40, 99, 100, 130]
    want = []
    for s in steps:
        timm_sched.step_update(s)
        want.append(optimizer.param_groups[0]["lr"])
    got = values(lambda s: schedules.warmup_cosine(s, base=2e-4, total_steps=100, warmup_steps=10,
                                                   final=1e-5, warmup_init=1e-6,
                                                   cosine_from="step0"), steps)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    made = schedules.make_schedule(dict(name="warmup_cosine", base=2e-4, total_steps=100,
                                        warmup_steps=10, final=1e-5, warmup_init=1e-6,
                                        cosine_from="step0"))
    np.testing.assert_allclose(values(made, steps), want, rtol=1e-5)
    with pytest.raises(ValueError, match=r"cosine_from expected one of \('warmup_end', 'step0'\), "
                                         r"found 'zero'"):
        schedules.make_schedule(dict(name="warmup_cosine", base=1.0, total_steps=10,
                                     cosine_from="zero"))
