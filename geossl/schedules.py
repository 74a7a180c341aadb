"""Step schedules for learning rate, weight decay, EMA momentum and teacher temperature.

Every schedule is a pure function of the step, traceable under jit (``step`` may be a Python int
or an int32 array) and returns a float32 scalar; after its last step it stays at its final value.
:func:`make_schedule` builds one from a config dict, and its result is a valid optax schedule.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

__all__ = ["constant", "warmup_cosine", "cosine", "linear", "linspace", "make_schedule"]

Schedule = Callable[[jax.typing.ArrayLike], jax.Array]


def _step(step) -> jax.Array:
    return jnp.asarray(step).astype(jnp.float32)


def constant(step, *, base) -> jax.Array:
    """``base`` at every step."""
    return jnp.full(jnp.shape(step), base, dtype=jnp.float32)


#: ``warmup_cosine``'s warmup ramps: s / W, or numpy's linspace over the W warmup steps.
WARMUP_SHAPES = ("linear", "linspace")
#: Where ``warmup_cosine``'s cosine starts: at the end of the warmup, or at step 0.
COSINE_STARTS = ("warmup_end", "step0")


def warmup_cosine(step, *, base, total_steps, warmup_steps=0, final=0.0,
                  warmup_init=0.0, warmup_shape="linear", cosine_from="warmup_end") -> jax.Array:
    """Linear warmup then cosine decay.

    For s < W = warmup_steps: warmup_init + (base − warmup_init) · s / W; with
    ``warmup_shape="linspace"`` · s / (W − 1), numpy's ``linspace(warmup_init, base, W)`` of
    DINO's and PerA's ``cosine_scheduler`` (base at the last warmup step).
    For W <= s <= T = total_steps: final + (base − final) · ½(1 + cos(π (s − W) / (T − W))); with
    ``cosine_from="step0"`` the cosine runs over the whole run, · ½(1 + cos(π s / T)), as timm's
    ``CosineLRScheduler`` without ``warmup_prefix`` (SimMIM's and GFM's), the warmup overriding
    its first W steps. For s > T: final. (The defaults give ``optax.warmup_cosine_decay_schedule``
    with decay_steps = T.) With T = W the value is base at s = W and final after it.
    """
    _check_steps(total_steps, warmup_steps)
    _check_shape(warmup_shape, cosine_from)
    s = _step(step)
    ramp = warmup_steps - 1 if warmup_shape == "linspace" else warmup_steps
    warm = warmup_init + (base - warmup_init) * s / max(ramp, 1)
    start = 0 if cosine_from == "step0" else warmup_steps
    progress = jnp.clip((s - start) / max(total_steps - start, 1), 0.0, 1.0)
    # written as a blend so the ends are exact: base at progress 0, final at progress 1
    w = 0.5 * (1.0 + jnp.cos(math.pi * progress))
    decay = base * w + final * (1.0 - w)
    return jnp.where(s < warmup_steps, warm, decay).astype(jnp.float32)


def cosine(step, *, base, final, total_steps) -> jax.Array:
    """Cosine from ``base`` at step 0 to ``final`` at ``total_steps``, then ``final``.

    Used for EMA momentum (0.99 → 1.0) and weight decay (0.04 → 0.2) as in DINO.
    """
    return warmup_cosine(step, base=base, final=final, total_steps=total_steps, warmup_steps=0)


def linear(step, *, start, end, steps) -> jax.Array:
    """``start`` + (``end`` − ``start``) · min(s / steps, 1): linear ramp, then constant ``end``.

    Used for the DINO teacher-temperature warmup (0.04 → 0.07 over 30 epochs). steps = 0 gives end.
    """
    if not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"linear: steps must be an int >= 0, found {steps!r}")
    s = _step(step)
    if steps == 0:
        return jnp.full(jnp.shape(s), end, dtype=jnp.float32)
    frac = jnp.clip(s / steps, 0.0, 1.0)
    return (start + (end - start) * frac).astype(jnp.float32)


def linspace(step, *, start, end, steps) -> jax.Array:
    """numpy's ``linspace(start, end, steps)[s]`` for s < ``steps``, then ``end``: the ramp
    start + (end − start) · s / (steps − 1) reaches ``end`` at its last step, s = steps − 1.

    PerA's teacher-temperature warmup (official ``CosineScheduler`` with warmup_iters =
    total_iters = W: 0.03 + 0.02 · s / (W − 1) for s < W, then 0.05); ``linear`` is the ramp
    s / W, one step behind. steps = 1: start at step 0, end after; steps = 0: end.
    """
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"linspace: steps must be an int >= 0, found {steps!r}")
    s = _step(step)
    if steps == 0:
        return jnp.full(jnp.shape(s), end, dtype=jnp.float32)
    frac = jnp.clip(s / max(steps - 1, 1), 0.0, 1.0)
    return (start + (end - start) * frac).astype(jnp.float32)


def _check_shape(warmup_shape, cosine_from) -> None:
    for name, value, allowed in (("warmup_shape", warmup_shape, WARMUP_SHAPES),
                                 ("cosine_from", cosine_from, COSINE_STARTS)):
        if value not in allowed:
            raise ValueError(f"warmup_cosine: {name} expected one of {allowed}, found {value!r}")


def _check_steps(total_steps, warmup_steps) -> None:
    for name, v in (("total_steps", total_steps), ("warmup_steps", warmup_steps)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, found {v!r}")
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} is larger than total_steps={total_steps}")


# name → (function, required keys, optional keys). "total_steps" is accepted by every schedule
# because the trainer fills it in for all of them (ignored where unused).
_SCHEDULES = {
    "constant": (constant, ("base",), ()),
    "warmup_cosine": (warmup_cosine, ("base", "total_steps"),
                      ("warmup_steps", "final", "warmup_init", "warmup_shape", "cosine_from")),
    "cosine": (cosine, ("base", "final", "total_steps"), ()),
    "linear": (linear, ("start", "end", "steps"), ()),
    "linspace": (linspace, ("start", "end", "steps"), ()),
}
# Keys that hold step counts (converted to int) or names (kept as str); the rest are values
# (converted to float).
_STEP_KEYS = ("total_steps", "warmup_steps", "steps")
_NAME_KEYS = ("warmup_shape", "cosine_from")
# The uniform config spelling (name/base/final) is also accepted for "linear" and "linspace".
_LINEAR_ALIASES = {"base": "start", "final": "end"}
_RAMPS = ("linear", "linspace")


def make_schedule(cfg: Mapping) -> Schedule:
    """Builds ``fn(step) -> float32`` from a dict-like config.

    ``cfg["name"]`` picks the schedule, the other keys are its keyword arguments:

    - constant: base
    - warmup_cosine: base, total_steps [, warmup_steps=0, final=0.0, warmup_init=0.0,
      warmup_shape="linear" | "linspace", cosine_from="warmup_end" | "step0"]
    - cosine: base, final, total_steps
    - linear: start (or base), end (or final) [, steps, defaulting to total_steps]
    - linspace: as linear (the ramp reaches end one step earlier: s / (steps − 1))

    ``total_steps`` is accepted (and ignored where unused) by every schedule. Unknown or missing
    keys raise ValueError naming the schedule and the keys it takes.
    """
    if not hasattr(cfg, "items"):
        raise ValueError(f"make_schedule: expected a dict-like config, found {type(cfg).__name__}")
    cfg = dict(cfg.items())
    name = cfg.pop("name", None)
    if name not in _SCHEDULES:
        raise ValueError(f"make_schedule: unknown schedule name {name!r}; expected one of "
                         f"{sorted(_SCHEDULES)}")
    fn, required, optional = _SCHEDULES[name]
    if name in _RAMPS:
        for alias, key in _LINEAR_ALIASES.items():
            if alias in cfg:
                if key in cfg:
                    raise ValueError(f"schedule {name!r}: give {key!r} or {alias!r}, not both")
                cfg[key] = cfg.pop(alias)
        if "steps" not in cfg and "total_steps" in cfg:
            cfg["steps"] = cfg["total_steps"]
    accepted = set(required) | set(optional) | {"total_steps"}
    unknown = sorted(set(cfg) - accepted)
    if unknown:
        raise ValueError(f"schedule {name!r}: unknown keys {unknown}; it takes {list(required)} "
                         f"and optionally {list(optional)}")
    missing = [k for k in required if k not in cfg]
    if missing:
        raise ValueError(f"schedule {name!r}: missing keys {missing} (it takes {list(required)} "
                         f"and optionally {list(optional)})")
    kwargs = {}
    for k, v in cfg.items():
        if k not in required and k not in optional:
            continue
        kwargs[k] = (_as_int(name, k, v) if k in _STEP_KEYS else str(v) if k in _NAME_KEYS
                     else float(v))
    if name == "warmup_cosine":
        _check_steps(kwargs["total_steps"], kwargs.get("warmup_steps", 0))
        _check_shape(kwargs.get("warmup_shape", WARMUP_SHAPES[0]),
                     kwargs.get("cosine_from", COSINE_STARTS[0]))
    if name in _RAMPS and kwargs["steps"] < 0:
        raise ValueError(f"schedule {name!r}: steps must be >= 0, found {kwargs['steps']}")

    def schedule(step) -> jax.Array:
        return fn(step, **kwargs)

    schedule.__name__ = f"{name}_schedule"
    schedule.config = dict(name=name, **kwargs)
    return schedule


def _as_int(name: str, key: str, v) -> int:
    if isinstance(v, bool) or float(v) != int(v):
        raise ValueError(f"schedule {name!r}: {key} must be a whole number of steps, found {v!r}")
    return int(v)
