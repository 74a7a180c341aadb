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
COMPUTE_OPTIONS = ("dtype", "remat", "drop_path_rate", "drop_path_uniform", "drop_path_subset")


def architecture_kwargs(model_cfg) -> dict:
    """``config.model`` without ``name``, ``COMPUTE_OPTIONS`` and the fields its family ignores
    (``Family.ignores``): the arguments that fix the parameter layout (what conversions to / from
    PyTorch and exports need)."""
    from geossl import models
    ignored = models.family(model_cfg["name"]).ignores
    return {k: v for k, v in dict(model_cfg).items()
            if k != "name" and k not in COMPUTE_OPTIONS and k not in ignored}


def create_from_config(model_cfg):
    """``models.create(name, **kwargs)`` from a ``config.model`` section, without the fields its
    family ignores (``Family.ignores``: a ResNet drops a ViT's structure fields)."""
    from geossl import models
    ignored = models.family(model_cfg["name"]).ignores
    kw = {k: v for k, v in model_kwargs(model_cfg).items() if k not in ignored}
    return models.create(model_cfg["name"], **kw)
