"""The one sharded train step shared by every objective, and the state initialiser."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from geossl.objectives.base import Objective, Variables
from geossl.parallel import cpu_options, mesh as mesh_lib
from geossl import schedules
from geossl.train import teacher as teacher_lib
from geossl.train.state import TrainState


def momentum_schedule(config):
    """EMA teacher momentum from ``config.ema`` (name, base, final, total_steps)."""
    cfg = dict(config.ema)
    if not cfg:
        return lambda step: jnp.float32(0.0)
    cfg.setdefault("total_steps", int(config.total_steps))
    return schedules.make_schedule(cfg)


def make_state(objective: Objective, tx, variables: Variables, rng) -> TrainState:
    """Builds the train state; an EMA teacher starts equal to the student."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=variables.params,
                      opt_state=tx.init(variables.params),
                      teacher=teacher_lib.initial(objective, variables),
                      extra=variables.extra, rng=rng)


def _split_micro(batch, accum: int):
    """(B, ...) → (accum, B/accum, ...) taking every accum-th row, so each micro-batch stays
    spread over all devices."""
    def one(x):
        b = x.shape[0]
        if b % accum:
            raise ValueError(f"batch of {b} rows is not divisible by grad_accum_steps={accum}")
        return jnp.swapaxes(x.reshape(b // accum, accum, *x.shape[1:]), 0, 1)
    return jax.tree_util.tree_map(one, batch)


def make_train_step(objective: Objective, tx, lr_fn, config, mesh, state_shardings):
    """Returns ``step(state, batch) -> (state, metrics)``: jitted, state donated, batch sharded
    over ("data", "fsdp"), metrics replicated float32 scalars."""
    accum = int(config.grad_accum_steps)
    momentum_fn = momentum_schedule(config)
    ema = objective.teacher_spec.kind == "ema"

    def carried(aux):
        """The state the loss updates: extra and an EMA teacher's BatchNorm statistics."""
        return {k: aux[k] for k in ("extra", "teacher_batch_stats") if k in aux}

    def loss_and_grad(params, teacher, extra, batch, rng, step):
        def f(p):
            return objective.loss(p, teacher, extra, batch, rng, step)
        return jax.value_and_grad(f, has_aux=True)(params)

    def step_fn(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        if accum == 1:
            (loss, aux), grads = loss_and_grad(state.params, state.teacher, state.extra, batch,
                                               rng, state.step)
            new, terms = carried(aux), aux["metrics"]
        else:
            micro = _split_micro(batch, accum)

            # Every micro-batch starts from the step's extra; their updates merge once below.
            def body(grads_sum, xs):
                mb, i = xs
                (l, aux), g = loss_and_grad(state.params, state.teacher, state.extra, mb,
                                            jax.random.fold_in(rng, i), state.step)
                grads_sum = jax.tree_util.tree_map(jnp.add, grads_sum, g)
                return grads_sum, (l, aux["metrics"], carried(aux))

            zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
            grads, (losses, terms, extras) = jax.lax.scan(
                body, zeros, (micro, jnp.arange(accum)))
            grads = jax.tree_util.tree_map(lambda g: g / accum, grads)
            new = objective.merge_extra(extras)
            loss = losses.mean()
            terms = jax.tree_util.tree_map(jnp.mean, terms)

        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        teacher = state.teacher
        momentum = momentum_fn(state.step)
        if ema:
            teacher = teacher_lib.ema_update(objective, state.teacher, params, momentum,
                                             new.get("teacher_batch_stats"))
        metrics = {"loss": loss, **terms, "grad_norm": optax.global_norm(grads),
                   "param_norm": optax.global_norm(params), "lr": lr_fn(state.step)}
        if ema:
            metrics["momentum"] = momentum
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  teacher=teacher, extra=new["extra"])
        return new_state, metrics

    batch_sharding = NamedSharding(mesh, P(mesh_lib.BATCH_AXES))
    return jax.jit(step_fn, in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, mesh_lib.replicated(mesh)), donate_argnums=(0,),
                   compiler_options=cpu_options.step_compiler_options(mesh.devices.flat))
