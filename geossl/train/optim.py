"""Optimisers (adamw, lars, sgd) with weight-decay rules and schedules, lr schedules and clipping."""

from __future__ import annotations

import re

import jax
import optax
from absl import logging

from geossl.parallel.sharding import path_str
from geossl import schedules

#: Each optimiser's own fields in ``config.optim`` (their defaults: ``configs.common.optim``); the
#: section holds those of ``optim.name`` only (``config_checks`` refuses others).
OPTIMIZER_FIELDS = {"adamw": ("b1", "b2", "eps"), "lars": ("momentum", "trust_coefficient"),
                    "sgd": ("momentum",)}

#: Token and position tables, never decayed under the "matrices" rule.
TOKEN_TABLES = r"(pos_embed|cls_token|mask_token|register_tokens|relative_position_bias_table)$"


def decay_mask(params, rule: str = "matrices"):
    """True where weight decay (and LARS adaptation) applies, by ``config.optim.decay``:

    - "matrices": parameters with 2+ dimensions that are not token / position tables (biases,
      norms and LayerScale, 1-D, are left alone; MoCo-v3, SimMIM, GFM);
    - "all": every parameter (DINO / PerA; MoCo v3's and SSL4EO-S12's AdamW over
      ``model.parameters()``);
    - "regex:PATTERN": every parameter whose path (``blocks_0/attn/qkv/kernel``) does *not*
      match PATTERN (``re.search``).
    """
    if rule == "all":
        return jax.tree_util.tree_map(lambda p: True, params)
    if rule == "matrices":
        tables = re.compile(TOKEN_TABLES)
        return jax.tree_util.tree_map_with_path(
            lambda path, p: p.ndim > 1 and not tables.search(path_str(path)), params)
    if isinstance(rule, str) and rule.startswith("regex:"):
        try:
            skip = re.compile(rule[len("regex:"):])
        except re.error as e:
            raise ValueError(f"config.optim.decay: bad regular expression in {rule!r}: {e}") from None
        return jax.tree_util.tree_map_with_path(lambda path, p: not skip.search(path_str(path)),
                                                params)
    raise ValueError(f"config.optim.decay: expected 'matrices', 'all' or 'regex:PATTERN', "
                     f"found {rule!r}")


def weight_decay_schedule(config):
    """``config.optim.weight_decay``: a number, or a schedule section (name, base, final, ...;
    ``total_steps`` filled in) such as DINO's cosine 0.04 → 0.4. Returns a float or ``fn(step)``."""
    wd = config.optim.weight_decay
    if isinstance(wd, (int, float)):
        if wd < 0:
            raise ValueError(f"config.optim.weight_decay: expected >= 0, found {wd}")
        return float(wd)
    if not hasattr(wd, "items"):
        raise ValueError(f"config.optim.weight_decay: expected a number or a schedule section, "
                         f"found {type(wd).__name__} {wd!r}")
    cfg = dict(wd.items())
    cfg.setdefault("total_steps", int(config.total_steps))
    return schedules.make_schedule(cfg)


def lr_schedule(config):
    """``config.lr`` (name, base, warmup_steps, final, ...) with ``config.total_steps`` filled in."""
    cfg = dict(config.lr)
    cfg.setdefault("total_steps", int(config.total_steps))
    if cfg.get("warmup_steps", 0) > cfg["total_steps"]:  # e.g. --config.total_steps=2 smoke runs
        logging.warning("lr warmup of %d steps cut to the run's %d steps", cfg["warmup_steps"],
                        cfg["total_steps"])
        cfg["warmup_steps"] = cfg["total_steps"]
    if cfg.get("scale_with_batch"):  # linear scaling rule: base · batch / reference
        cfg["base"] = cfg["base"] * config.global_batch / cfg.pop("scale_with_batch")
    else:
        cfg.pop("scale_with_batch", None)
    return schedules.make_schedule(cfg)


def make_optimizer(config, params) -> tuple[optax.GradientTransformation, callable]:
    """Returns ``(tx, lr_fn)`` from ``config.optim``: name, weight_decay (number or schedule),
    decay (which parameters decay, see :func:`decay_mask`), clip_norm and the optimiser's own
    fields (adamw: b1, b2, eps; lars: momentum, trust_coefficient; sgd: momentum)."""
    o = config.optim
    lr = lr_schedule(config)
    mask = decay_mask(params, o.decay)
    wd = weight_decay_schedule(config)
    name = o.name
    if name == "adamw":
        core = optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=wd, mask=mask)
    elif name == "lars":
        core = lars(lr, wd, mask, momentum=o.momentum, trust_coefficient=o.trust_coefficient)
    elif name == "sgd":
        core = optax.chain(optax.add_decayed_weights(wd, mask), optax.sgd(lr, momentum=o.momentum))
    else:
        raise ValueError(f"config.optim.name: expected adamw, lars or sgd, found {name!r}")
    parts = []
    if o.clip_norm:
        parts.append(optax.clip_by_global_norm(o.clip_norm))
    parts.append(core)
    return optax.chain(*parts), lr


def lars(lr, weight_decay, mask, *, momentum: float, trust_coefficient: float):
    """MoCo v3's LARS (its ``optimizer.LARS``, which SSL4EO-S12's MoCo-v3 recipe uses): on the
    ``mask``ed parameters the gradient plus weight decay, scaled by trust_coefficient · ‖p‖ / ‖g‖
    (1 where a norm is 0); then the momentum trace; then −lr. ``optax.lars`` applies the learning
    rate before the trace, so a changing lr (warmup) weighs the trace's past steps otherwise
    (0.68× MoCo v3's step 20 of a 610-step warmup)."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask),
        optax.masked(optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient), mask),
        optax.trace(decay=momentum, nesterov=False),
        optax.scale_by_learning_rate(lr))
