"""The teacher of a run, built and updated here from ``objective.teacher_spec`` (objectives only
declare it): an EMA of part of the student, a frozen network from ``config.teacher``, or none.
A teacher is ``{"params", ["batch_stats"]}``, like a flax variable dict."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from geossl.objectives.base import Objective, Variables
from geossl.train import pretrained


def initial(objective: Objective, variables: Variables):
    """The teacher a run starts with: an EMA teacher equal to the student's tracked part (and its
    BatchNorm statistics), else ``variables.teacher`` (a frozen one set by the trainer, or None)."""
    spec = objective.teacher_spec
    if spec.kind != "ema":
        return variables.teacher
    teacher = {"params": objective.teacher_source(variables.params)}
    if spec.batch_stats:
        teacher["batch_stats"] = spec.select(variables.extra["batch_stats"])
    return jax.tree_util.tree_map(jnp.copy, teacher)


def ema_update(objective: Objective, teacher, params, momentum, batch_stats=None):
    """teacher params ← m·teacher + (1−m)·student; BatchNorm statistics replaced by the loss's."""
    new = {"params": optax.incremental_update(objective.teacher_source(params), teacher["params"],
                                              step_size=1.0 - momentum)}
    if objective.teacher_spec.batch_stats:
        new["batch_stats"] = batch_stats
    return new


def _frozen_input(config):
    t = config.teacher.model
    return jnp.zeros((1, int(t.img_size), int(t.img_size), int(t.in_chans)), jnp.float32)


def _cast(objective: Objective, teacher: dict) -> dict:
    """Frozen teacher params in ``config.teacher.model.dtype`` (bfloat16 halves their memory)."""
    dtype = jnp.dtype(objective.teacher_model.dtype)
    return dict(teacher, params=jax.tree_util.tree_map(lambda p: p.astype(dtype), teacher["params"]))


def frozen_shapes(config, objective: Objective):
    """ShapeDtypeStructs of the frozen teacher (for sharding), without building or loading it."""
    def init(rng):
        variables = objective.teacher_model.init(rng, _frozen_input(config))
        return _cast(objective, {k: variables[k] for k in ("params", "batch_stats") if k in variables})
    return jax.eval_shape(init, jax.random.PRNGKey(0))


def build_frozen(config, objective: Objective, rng) -> dict:
    """The frozen teacher on the host: ``config.teacher.model`` filled from its checkpoint."""
    return _cast(objective, pretrained.build_frozen_teacher(config, objective.teacher_model, rng))
