"""Builds a backbone from a ``config.model`` section: ``name`` plus keyword arguments."""

from __future__ import annotations

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def model_kwargs(model_cfg) -> dict:
    """``config.model`` without ``name``; dtype strings become jnp dtypes."""
    kw = {k: v for k, v in dict(model_cfg).items() if k != "name"}
    if isinstance(kw.get("dtype"), str):
        if kw["dtype"] not in _DTYPES:
            raise ValueError(f"config.model.dtype: expected one of {sorted(_DTYPES)}, found {kw['dtype']!r}")
        kw["dtype"] = _DTYPES[kw["dtype"]]
    return kw


#: config.model fields that set how a model computes, not what it is (kept out of conversions).
COMPUTE_OPTIONS = ("dtype", "remat", "drop_path_rate", "drop_path_uniform")


def architecture_kwargs(model_cfg) -> dict:
    """``config.model`` without ``name`` and ``COMPUTE_OPTIONS``: the arguments that fix the
    parameter layout (what conversions to / from PyTorch and exports need)."""
    return {k: v for k, v in dict(model_cfg).items()
            if k != "name" and k not in COMPUTE_OPTIONS}


#: config.model fields that only ViTs (and, in part, Swins) take; dropped for ResNets, which read
#: the input size from the data. Swins get every field (an unknown one raises).
VIT_ONLY = ("img_size", "patch_size", "depth", "num_heads", "embed_dim", "drop_path_rate",
            "drop_path_uniform",
            "layerscale_init", "num_register_tokens", "mlp_ratio", "qkv_bias")


def create_from_config(model_cfg):
    from geossl import models
    kw = model_kwargs(model_cfg)
    if not (models.is_vit(model_cfg["name"]) or models.is_swin(model_cfg["name"])):
        kw = {k: v for k, v in kw.items() if k not in VIT_ONLY}
    return models.create(model_cfg["name"], **kw)
