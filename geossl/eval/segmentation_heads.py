"""Segmentation decoders over an encoder's feature levels, and the per-pixel loss.

An encoder gives a list of feature maps, finest first (``encoder_levels``):
- ViT: the final-normed patch tokens on their grid, one level (B, H/p, W/p, D); with ``blocks``
  the final-normed tokens of those blocks (``return_layers``), one level each, all (B, H/p, W/p, D);
- ResNet / Swin: the stage maps ``out["features"]`` [(B, H/4, W/4, c1), …, (B, H/32, W/32, F)].
``LinearHead`` is a linear classifier per location (one level); ``FPNHead`` a small feature
pyramid (FPN, Lin et al. 2017): 1×1 lateral convolutions to ``dim`` channels, top-down sum with
bilinear upsampling, one 3×3 convolution + ReLU on the finest level, then a linear classifier;
``upernet.UPerNetHead`` UPerNet (PPM + FPN with BatchNorm conv blocks; levels of one resolution,
a plain ViT's blocks, first go through its ×4 / ×2 / ×1 / ×0.5 neck). ``build_head`` picks one by
name. Each gives logits (B, h, w, K) at its finest level; ``upsample_logits`` resizes them
bilinearly (half-pixel centres) to the label map.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from geossl.eval import upernet
from geossl.eval.features import wavelength_kwargs

IGNORE_INDEX = 255
HEADS = ("auto", "linear", "fpn", "upernet")


def _token_grid(model, tokens, images, exact: bool = False):
    """(B, M, D) tokens → (B, H/p, W/p, D) float32 of the last (H/p)(W/p) (a block's output ends
    with its patch tokens); ``exact``: M must be that count."""
    patch = int(model.patch_size)
    grid = (images.shape[1] // patch, images.shape[2] // patch)
    count = grid[0] * grid[1]
    if tokens.shape[1] < count or (exact and tokens.shape[1] != count):
        raise ValueError(f"{type(model).__name__}: {tokens.shape[1]} patch tokens for a "
                         f"{grid[0]}x{grid[1]} patch grid")
    tokens = tokens[:, tokens.shape[1] - count:]
    return tokens.reshape(tokens.shape[0], *grid, tokens.shape[-1]).astype(jnp.float32)


def encoder_levels(model, variables, images, *, train: bool = False, mutable=False,
                   blocks: tuple[int, ...] = (), wavelengths=None):
    """Feature levels (finest first, each (B, h, w, c) float32) of ``images`` (B, H, W, C).

    ``blocks``: block indices of a ViT (its ``return_layers``) whose final-normed tokens are the
    levels, one per block (pass none for stage-map encoders). ``wavelengths`` (C,): those of the
    images' bands for a wavelength-conditioned encoder (DOFA; ``features.wavelength_kwargs``).
    With ``mutable`` (e.g. ["batch_stats"]) returns ``(levels, updated collections)``."""
    kw = {"return_layers": tuple(blocks)} if blocks else {}
    kw.update(wavelength_kwargs(model, wavelengths))
    result = model.apply(variables, images, train=train, mutable=mutable, **kw)
    out, updates = result if mutable else (result, None)
    if "features" in out:
        levels = [jnp.asarray(f, jnp.float32) for f in out["features"]]
    elif blocks and "intermediates" in out:
        levels = [_token_grid(model, tokens, images) for tokens in out["intermediates"]]
    elif "patch_tokens" in out:
        levels = [_token_grid(model, out["patch_tokens"], images, exact=True)]
    else:
        raise ValueError(f"{type(model).__name__} gives neither stage maps ('features') nor "
                         f"'patch_tokens' (found {sorted(out)}): no per-location features to "
                         f"segment with")
    return (levels, updates) if mutable else levels


def standardize(levels, stats):
    """(x − mean) / std per level and channel; ``stats`` [(mean (c,), std (c,)), …]."""
    return [(x - m) / s for x, (m, s) in zip(levels, stats)]


class LinearHead(nn.Module):
    """Linear classifier per location of the one feature level: (B, h, w, D) → (B, h, w, K)."""

    num_classes: int

    @nn.compact
    def __call__(self, levels, *, train: bool = False):
        if len(levels) != 1:
            raise ValueError(f"LinearHead takes one feature level, found {len(levels)}")
        return nn.Dense(self.num_classes, name="classifier")(levels[0])


class FPNHead(nn.Module):
    """Small FPN over stage maps (finest first) → logits (B, h1, w1, K) at the finest level."""

    num_classes: int
    dim: int = 128

    @nn.compact
    def __call__(self, levels, *, train: bool = False):
        x = None
        for i in reversed(range(len(levels))):
            lateral = nn.Conv(self.dim, (1, 1), name=f"lateral_{i}")(levels[i])
            if x is not None:
                x = jax.image.resize(x, lateral.shape[:3] + (self.dim,), "bilinear")
                lateral = lateral + x
            x = lateral
        x = nn.relu(nn.Conv(self.dim, (3, 3), padding="SAME", name="smooth")(x))
        return nn.Conv(self.num_classes, (1, 1), name="classifier")(x)


def make_head(num_levels: int, num_classes: int, fpn_dim: int = 128) -> nn.Module:
    """``LinearHead`` for one level (ViT tokens), ``FPNHead`` for a pyramid of stage maps."""
    if num_levels == 1:
        return LinearHead(num_classes)
    return FPNHead(num_classes, fpn_dim)


def build_head(kind: str, level_shapes, num_classes: int, *, fpn_dim: int = 128,
               channels: int = 512, dropout: float = 0.1) -> nn.Module:
    """The decoder ``kind`` names for levels of ``level_shapes`` [(…, h, w, c)], finest first:
    "auto" (``make_head``), "linear", "fpn" or "upernet" (levels of one resolution, two or more:
    through UPerNet's plain-ViT neck, ``upernet.plain_rescales``)."""
    if kind not in HEADS:
        raise ValueError(f"head: expected one of {HEADS}, found {kind!r}")
    if kind == "auto":
        return make_head(len(level_shapes), num_classes, fpn_dim)
    if kind == "linear":
        if len(level_shapes) != 1:
            raise ValueError(f"head 'linear' takes one feature level (ViT tokens); the encoder "
                             f"gives {len(level_shapes)}: use 'fpn' or 'upernet'")
        return LinearHead(num_classes)
    if kind == "fpn":
        return FPNHead(num_classes, fpn_dim)
    if len(level_shapes) < 2:
        raise ValueError("head 'upernet' takes two or more feature levels, found 1 (a ViT gives "
                         "four with its blocks: pass blocks)")
    plain = len({tuple(s[-3:-1]) for s in level_shapes}) == 1
    return upernet.UPerNetHead(num_classes, channels, dropout=dropout,
                               rescales=upernet.plain_rescales(len(level_shapes)) if plain
                               else None)


def upsample_logits(logits, size: tuple[int, int]):
    """(B, h, w, K) → (B, H, W, K) bilinear, float32."""
    b, _, _, k = logits.shape
    return jax.image.resize(logits.astype(jnp.float32), (b, size[0], size[1], k), "bilinear")


def pixel_cross_entropy(logits, labels, *, ignore_index: int = IGNORE_INDEX, class_weights=None):
    """Mean softmax cross entropy over the labelled pixels; logits (B, H, W, K), labels (B, H, W)
    integer with ``ignore_index`` for unlabelled pixels (0 when none is labelled).

    ``class_weights`` (K,): Σ w_y · ce / Σ w_y over the labelled pixels (torch's
    ``CrossEntropyLoss(weight=w, ignore_index=…)``)."""
    labels = labels.astype(jnp.int32)
    valid = labels != ignore_index
    safe = jnp.where(valid, labels, 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
    weight = valid.astype(jnp.float32)
    if class_weights is not None:
        weight = weight * jnp.asarray(class_weights, jnp.float32)[safe]
    total = jnp.sum(weight)
    return jnp.sum(ce * weight) / jnp.where(total > 0, total, 1.0)
