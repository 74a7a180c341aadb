"""Layer-wise learning-rate decay for fine-tuning ViTs (BEiT, Bao et al. 2022; MAE's ``lr_decay``).

Layer ids of a ViT with ``depth`` blocks: the embedding (``patch_embed``, ``pos_embed``,
``cls_token``, ``mask_token``, ``register_tokens``) is layer 0, ``blocks_i`` is layer i + 1, and
everything else (the final norm, a head) is layer depth + 1. A parameter of layer l trains at
lr · decay^(depth + 1 − l): the head at lr, the first block at lr · decay^depth.
``scale_updates`` multiplies an optimiser's updates by such a tree, which for AdamW is a per-group
learning rate (its decoupled weight decay is scaled with it, as torch's per-group lr does).
"""

from __future__ import annotations

import re

import jax
import optax

from geossl.parallel.sharding import path_str

EMBEDDING = re.compile(r"^(patch_embed|pos_embed|cls_token|mask_token|register_tokens)(/|$)")
BLOCK = re.compile(r"^blocks_(\d+)(/|$)")


def layer_id(path: str, depth: int) -> int:
    """Layer of the parameter at ``path`` (e.g. ``blocks_3/attn/qkv/kernel``) in a ViT."""
    if EMBEDDING.search(path):
        return 0
    block = BLOCK.search(path)
    if block:
        return int(block.group(1)) + 1
    return depth + 1


def lr_multipliers(params, depth: int, decay: float):
    """Tree like ``params`` of decay^(depth + 1 − layer id) per parameter (all 1 for decay 1)."""
    if not 0 < decay <= 1:
        raise ValueError(f"layer_decay: expected a value in (0, 1], found {decay}")
    return jax.tree_util.tree_map_with_path(
        lambda path, _: float(decay) ** (depth + 1 - layer_id(path_str(path), depth)), params)


def model_depth(model, decay: float) -> int:
    """The block count of a ViT-like ``model`` (its ``depth``); a decay other than 1 on a model
    without numbered blocks is an error naming the model."""
    depth = getattr(model, "depth", None)
    if isinstance(depth, int):
        return depth
    if decay != 1:
        raise ValueError(f"layer_decay {decay}: layer-wise decay needs a ViT (blocks_0 … "
                         f"blocks_{{depth-1}}); {type(model).__name__} has none: pass 1")
    return 0


def scale_updates(multipliers) -> optax.GradientTransformation:
    """Multiplies each update by its entry of ``multipliers`` (a tree like the params)."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, m: u * m, updates, multipliers), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
