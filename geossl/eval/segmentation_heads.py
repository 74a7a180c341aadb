"""Light segmentation decoders over an encoder's feature levels, and the per-pixel loss.

An encoder gives a list of feature maps, finest first (``encoder_levels``):
- ViT: the final-normed patch tokens on their grid, one level (B, H/p, W/p, D);
- ResNet / Swin: the stage maps ``out["features"]`` [(B, H/4, W/4, c1), …, (B, H/32, W/32, F)].
``LinearHead`` is a linear classifier per location (one level); ``FPNHead`` a small feature
pyramid (FPN, Lin et al. 2017): 1×1 lateral convolutions to ``dim`` channels, top-down sum with
bilinear upsampling, one 3×3 convolution + ReLU on the finest level, then a linear classifier.
Either gives logits (B, h, w, K) at its finest level; ``upsample_logits`` resizes them bilinearly
(half-pixel centres) to the label map.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

IGNORE_INDEX = 255


def encoder_levels(model, variables, images, *, train: bool = False, mutable=False):
    """Feature levels (finest first, each (B, h, w, c) float32) of ``images`` (B, H, W, C).

    With ``mutable`` (e.g. ["batch_stats"]) returns ``(levels, updated collections)``."""
    result = model.apply(variables, images, train=train, mutable=mutable)
    out, updates = result if mutable else (result, None)
    if "features" in out:
        levels = [jnp.asarray(f, jnp.float32) for f in out["features"]]
    elif "patch_tokens" in out:
        tokens = out["patch_tokens"]
        patch = int(model.patch_size)
        grid = (images.shape[1] // patch, images.shape[2] // patch)
        if tokens.shape[1] != grid[0] * grid[1]:
            raise ValueError(f"{type(model).__name__}: {tokens.shape[1]} patch tokens for a "
                             f"{grid[0]}x{grid[1]} patch grid")
        levels = [tokens.reshape(tokens.shape[0], *grid, tokens.shape[-1]).astype(jnp.float32)]
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
    def __call__(self, levels):
        if len(levels) != 1:
            raise ValueError(f"LinearHead takes one feature level, found {len(levels)}")
        return nn.Dense(self.num_classes, name="classifier")(levels[0])


class FPNHead(nn.Module):
    """Small FPN over stage maps (finest first) → logits (B, h1, w1, K) at the finest level."""

    num_classes: int
    dim: int = 128

    @nn.compact
    def __call__(self, levels):
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


def upsample_logits(logits, size: tuple[int, int]):
    """(B, h, w, K) → (B, H, W, K) bilinear, float32."""
    b, _, _, k = logits.shape
    return jax.image.resize(logits.astype(jnp.float32), (b, size[0], size[1], k), "bilinear")


def pixel_cross_entropy(logits, labels, *, ignore_index: int = IGNORE_INDEX):
    """Mean softmax cross entropy over the labelled pixels; logits (B, H, W, K), labels (B, H, W)
    integer with ``ignore_index`` for unlabelled pixels (0 when none is labelled)."""
    labels = labels.astype(jnp.int32)
    valid = labels != ignore_index
    ce = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), jnp.where(valid, labels, 0))
    return jnp.sum(ce * valid) / jnp.maximum(jnp.sum(valid), 1)
