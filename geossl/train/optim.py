"""Optimisers (adamw, lars, sgd) with no-decay masks, learning-rate schedules and clipping."""

from __future__ import annotations

import re

import jax
import optax
from absl import logging

from geossl.parallel.sharding import path_str
from geossl.train import schedules

#: Parameters never decayed (besides every 1-D parameter: biases, norms, LayerScale).
DEFAULT_NO_DECAY = r"(pos_embed|cls_token|mask_token|register_tokens)$"


def decay_mask(params, no_decay: str = DEFAULT_NO_DECAY):
    """True where weight decay (and LARS adaptation) applies: >=2-D and not a token table."""
    pattern = re.compile(no_decay) if no_decay else None

    def one(path, p):
        return p.ndim > 1 and not (pattern and pattern.search(path_str(path)))

    return jax.tree_util.tree_map_with_path(one, params)


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
    """Returns ``(tx, lr_fn)`` from ``config.optim`` (name, weight_decay, clip_norm, ...)."""
    o = config.optim
    lr = lr_schedule(config)
    mask = decay_mask(params, o.get("no_decay", DEFAULT_NO_DECAY))
    name = o.name
    if name == "adamw":
        core = optax.adamw(lr, b1=o.get("b1", 0.9), b2=o.get("b2", 0.999), eps=o.get("eps", 1e-8),
                           weight_decay=o.weight_decay, mask=mask)
    elif name == "lars":
        core = optax.lars(lr, weight_decay=o.weight_decay, weight_decay_mask=mask,
                          trust_ratio_mask=mask, momentum=o.get("momentum", 0.9),
                          trust_coefficient=o.get("trust_coefficient", 0.001))
    elif name == "sgd":
        core = optax.chain(optax.add_decayed_weights(o.weight_decay, mask),
                           optax.sgd(lr, momentum=o.get("momentum", 0.9)))
    else:
        raise ValueError(f"config.optim.name: expected adamw, lars or sgd, found {name!r}")
    parts = []
    if o.get("clip_norm", 0.0):
        parts.append(optax.clip_by_global_norm(o.clip_norm))
    parts.append(core)
    return optax.chain(*parts), lr
