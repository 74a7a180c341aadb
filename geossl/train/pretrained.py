"""Weights from outside the run, converted by the trainer and handed to the objective as arrays.

Student (``config.init``): ``torch_checkpoint`` = a DINOv2 / DINO / torchvision / timm state dict
(.pth or .safetensors) converted by ``geossl.convert`` (position embeddings resampled to the
configured grid; the first layer re-initialised for the band count, or adapted:
``first_layer`` = "reinit" | "repeat"), or ``workdir`` = the backbone of another geossl run.
Frozen teacher (``config.teacher``): ``model`` (name and arguments) plus ``torch_checkpoint``.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from geossl import convert
from geossl.models import is_swin
from geossl.models.from_config import architecture_kwargs, create_from_config
from geossl.train.checkpoint import load_backbone


def check_same_tree(name: str, loaded, current) -> None:
    """Raises if ``loaded`` and ``current`` differ in any path or shape (all listed at once)."""
    want = {jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(current)}
    got = {jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(loaded)}
    problems = [f"{k}: expected {want.get(k)}, found {got.get(k)}"
                for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)]
    if problems:
        raise ValueError(f"{name} does not fit the configured network:\n  " + "\n  ".join(problems[:20]))


def load_student_backbone(config, current: dict) -> dict | None:
    """``{"params", ["batch_stats"]}`` for the student backbone from ``config.init``, or None when it
    asks for nothing. ``current``: the freshly initialised backbone (its first layer is kept for
    ``first_layer="reinit"``; its tree is what the loaded one must match)."""
    init = config.init
    path, workdir = init.torch_checkpoint, init.workdir
    if path and workdir:
        raise ValueError("config.init: set torch_checkpoint or workdir, not both")
    if workdir:
        _, loaded = load_backbone(workdir)
        name = f"backbone of {workdir}"
    elif path:
        mode = init.first_layer
        loaded = convert.from_torch(convert.load_state_dict(path), config.model.name,
                                    first_layer=mode, rng=np.random.default_rng(config.seed),
                                    **architecture_kwargs(config.model))
        if mode == "reinit":
            loaded = _take_first_layer(loaded, current["params"])
        name = path
    else:
        return None
    loaded = jax.tree_util.tree_map(np.asarray, loaded)
    check_same_tree(name, loaded["params"], current["params"])
    if current.get("batch_stats"):
        check_same_tree(name, loaded.get("batch_stats", {}), current["batch_stats"])
    return loaded


def build_frozen_teacher(config, model, rng) -> dict:
    """The frozen teacher's ``{"params", ["batch_stats"]}``: ``model`` (``config.teacher.model``)
    initialised at its input size, then filled from ``config.teacher.torch_checkpoint`` (strict;
    without one the random initialisation stays, with a warning: tests and smoke runs)."""
    t = config.teacher
    size = int(t.model.img_size)
    x = jnp.zeros((1, size, size, int(t.model.in_chans)), jnp.float32)
    variables = jax.device_get(jax.jit(model.init)(rng, x))
    current = {k: variables[k] for k in ("params", "batch_stats") if k in variables}
    path = t.torch_checkpoint
    if not path:
        logging.warning("config.teacher.torch_checkpoint is empty: the frozen teacher %s keeps its "
                        "random initialisation", t.model.name)
        return current
    loaded = convert.from_torch(convert.load_state_dict(path), t.model.name,
                                **architecture_kwargs(t.model))
    loaded = jax.tree_util.tree_map(np.asarray, loaded)
    check_same_tree(path, loaded["params"], current["params"])
    if current.get("batch_stats"):
        check_same_tree(path, loaded.get("batch_stats", {}), current["batch_stats"])
    return {k: loaded[k] for k in current}


def _take_first_layer(loaded: dict, params) -> dict:
    """Puts the freshly initialised first layer (ViT patch_embed / ResNet conv1) into ``loaded``."""
    new = dict(loaded["params"])
    if "patch_embed" in params:
        new["patch_embed"] = params["patch_embed"]
    elif "conv1" in params:
        new["conv1"] = params["conv1"]
    return dict(loaded, params=new)


def write_random_teacher(model_cfg, directory: str, *, seed: int = 0, layout: str = "original") -> str:
    """A randomly initialised ``model_cfg`` network written once as a torch-layout safetensors
    checkpoint in ``directory`` (the original Microsoft layout for a Swin, like the ImageNet-22k
    weights GFM distils from); returns its path. The name holds a hash of the architecture and
    the seed, so an existing file is that very network and is reused. Demo runs and tests use it
    as ``config.teacher.torch_checkpoint``, imported like a real checkpoint."""
    arch = architecture_kwargs(model_cfg)
    key = json.dumps({"name": model_cfg["name"], "seed": seed, "layout": layout,
                      **{k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()}},
                     sort_keys=True)
    path = os.path.join(directory, f"random-{model_cfg['name']}-"
                                   f"{hashlib.sha256(key.encode()).hexdigest()[:12]}.safetensors")
    if os.path.isfile(path):
        return path
    size = int(model_cfg["img_size"])
    x = jnp.zeros((1, size, size, int(model_cfg["in_chans"])), jnp.float32)
    variables = jax.device_get(create_from_config(model_cfg).init(jax.random.PRNGKey(seed), x))
    variables = {k: variables[k] for k in ("params", "batch_stats") if k in variables}
    kw = {"layout": layout} if is_swin(model_cfg["name"]) else {}
    state_dict = convert.to_torch(variables, model_cfg["name"], **kw, **arch)
    convert.save_state_dict(state_dict, path, {"note": "random initialisation (demo teacher)"})
    return path
