"""Continual-pretraining initialisation of a backbone, shared by all objectives (``config.init``).

``config.init.torch_checkpoint``: a DINOv2 / DINO / torchvision / timm state dict (.pth or
.safetensors) converted by ``geossl.convert`` (position embeddings resampled to the configured
grid; the first layer re-initialised for the band count, or adapted: ``config.init.first_layer``
= "reinit" | "repeat"). ``config.init.workdir``: the backbone of another geossl run.
"""

from __future__ import annotations

import jax
import numpy as np


def _check_same_tree(name: str, loaded, current) -> None:
    want = {jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(current)}
    got = {jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(loaded)}
    problems = [f"{k}: expected {want.get(k)}, found {got.get(k)}"
                for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)]
    if problems:
        raise ValueError(f"{name} does not fit the configured backbone:\n  " + "\n  ".join(problems[:20]))


def load_backbone_init(config, params, batch_stats=None) -> dict | None:
    """Returns ``{"params": ..., ["batch_stats": ...]}`` for the backbone, or None if
    ``config.init`` asks for nothing. ``params`` / ``batch_stats`` are the freshly initialised
    backbone's (the "reinit" first layer is taken from them)."""
    init = config.get("init", {}) or {}
    path, workdir = init.get("torch_checkpoint", ""), init.get("workdir", "")
    if path and workdir:
        raise ValueError("config.init: set torch_checkpoint or workdir, not both")
    if workdir:
        from geossl.train.checkpoint import load_backbone
        _, loaded = load_backbone(workdir)
        name = f"backbone of {workdir}"
    elif path:
        from geossl import convert
        from geossl.convert.io import load_state_dict
        from geossl.models.from_config import architecture_kwargs
        kw = architecture_kwargs(config.model)
        mode = init.get("first_layer", "reinit")
        loaded = convert.from_torch(load_state_dict(path), config.model.name,
                                    first_layer=mode, rng=np.random.default_rng(config.seed), **kw)
        if mode == "reinit":
            loaded = _take_first_layer(loaded, params)
        name = path
    else:
        return None
    loaded = jax.tree_util.tree_map(np.asarray, loaded)
    _check_same_tree(name, loaded["params"], params)
    if batch_stats:
        _check_same_tree(name, loaded.get("batch_stats", {}), batch_stats)
    return loaded


def _take_first_layer(loaded: dict, params) -> dict:
    """Puts the freshly initialised first layer (ViT patch_embed / ResNet conv1) into ``loaded``."""
    new = dict(loaded["params"])
    if "patch_embed" in params:
        new["patch_embed"] = params["patch_embed"]
    elif "conv1" in params:
        new["conv1"] = params["conv1"]
    return dict(loaded, params=new)
