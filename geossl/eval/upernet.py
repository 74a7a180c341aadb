"""UPerNet decoder (Xiao et al. 2018) as mmsegmentation's ``UPerHead`` and PANGAEA's ``SegUPerNet``.

Input: feature levels, finest first, [(B, h_i, w_i, c_i)] (at least two). Steps:
1. neck (``rescales``, for a plain ViT whose levels share one resolution): level i is resampled by
   rescales[i]: 4 → ConvT 2×2/2, BatchNorm, GELU, ConvT 2×2/2; 2 → ConvT 2×2/2; 1 → itself;
   0.5 → max pool 2×2/2 (BEiT's / mmseg's ``Feature2Pyramid``, PANGAEA's neck for plain encoders);
   ``rescales=None`` uses the levels as they are (ResNet / Swin stages);
2. PPM on the deepest level: per pool scale s (1, 2, 3, 6) an adaptive average pool to s × s
   (torch's bins: [⌊i·h/s⌋, ⌈(i+1)·h/s⌉)), a 1×1 conv block, bilinear back to (h, w);
   [level, pooled…] concatenated → 3×3 conv block (``bottleneck``);
3. FPN: 1×1 conv block (``lateral_i``) on every other level; top-down from the deepest,
   lateral_{i-1} += bilinear(lateral_i); a 3×3 conv block (``fpn_i``) on each but the PPM output;
   all bilinear to the finest level, concatenated finest first → 3×3 conv block
   (``fpn_bottleneck``);
4. channel dropout (``Dropout2d``, training only) and a 1×1 conv with bias (``classifier``) →
   logits (B, h_0', w_0', K) at the finest (rescaled) level.
A conv block is conv (no bias) → BatchNorm (ε 1e-5) → ReLU (mmseg's ``ConvModule``,
smp's ``Conv2dReLU``); bilinear is half-pixel (``align_corners=False``) without antialiasing,
like torch's ``interpolate``. BatchNorm keeps running averages in ``batch_stats`` (train=True:
batch statistics). Defaults are PANGAEA's: 512 channels, pool scales (1, 2, 3, 6), dropout 0.1.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from geossl.models.layers import gelu

POOL_SCALES = (1, 2, 3, 6)
PLAIN_RESCALES = (4, 2, 1, 0.5)


def plain_rescales(num_levels: int) -> tuple[float, ...]:
    """PANGAEA's neck factors for ``num_levels`` one-resolution levels: (4, 2, 1, 0.5)[⌊4i/n⌋]."""
    return tuple(PLAIN_RESCALES[int(i / num_levels * 4)] for i in range(num_levels))


def default_blocks(depth: int) -> tuple[int, ...]:
    """The four ViT blocks whose outputs feed UPerNet: d−1 − q·(4, 3, 2, 0) with q = d // 6, i.e.
    mmseg's / PANGAEA's (3, 5, 7, 11) of 12 blocks and (7, 11, 15, 23) of 24; shallower than 6
    blocks: four evenly spaced (repeats allowed)."""
    if depth < 1:
        raise ValueError(f"default_blocks: expected a depth >= 1, found {depth}")
    if depth < 6:
        return tuple(int(round(v)) for v in np.linspace(0, depth - 1, 4))
    q = depth // 6
    return tuple(depth - 1 - q * k for k in (4, 3, 2, 0))


def adaptive_pool_matrix(size: int, out: int) -> np.ndarray:
    """(out, size) float32 averaging weights of torch's ``AdaptiveAvgPool`` along one axis: row i
    averages [⌊i·size/out⌋, ⌈(i+1)·size/out⌉)."""
    weights = np.zeros((out, size), np.float32)
    for i in range(out):
        start, stop = (i * size) // out, -((-(i + 1) * size) // out)
        weights[i, start:stop] = 1.0 / (stop - start)
    return weights


def adaptive_avg_pool(x, out: int):
    """(B, h, w, C) → (B, out, out, C), torch's ``AdaptiveAvgPool2d(out)``."""
    rows = jnp.asarray(adaptive_pool_matrix(x.shape[1], out))
    cols = jnp.asarray(adaptive_pool_matrix(x.shape[2], out))
    return jnp.einsum("ph,bhwc,qw->bpqc", rows, x, cols)


def resize_bilinear(x, size: Sequence[int]):
    """(B, h, w, C) → (B, H, W, C): half-pixel bilinear, no antialiasing (torch ``interpolate``
    with ``align_corners=False``)."""
    size = tuple(int(s) for s in size)
    if x.shape[1:3] == size:
        return x
    return jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), "bilinear", antialias=False)


class ConvBlock(nn.Module):
    """conv k×k (no bias, 'same' padding) → BatchNorm → ReLU: (B, h, w, c) → (B, h, w, features)."""

    features: int
    kernel: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        pad = self.kernel // 2
        x = nn.Conv(self.features, (self.kernel, self.kernel), padding=((pad, pad), (pad, pad)),
                    use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="bn")(x)
        return nn.relu(x)


class Upsample2x(nn.Module):
    """torch ``ConvTranspose2d(c, features, 2, stride=2)``: each input pixel writes a 2 × 2 patch,
    out[2i + a, 2j + b] = x[i, j] · kernel[a, b] + bias; (B, h, w, c) → (B, 2h, 2w, features)."""

    features: int

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (2, 2, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        y = jnp.einsum("bhwc,ijco->bhiwjo", x, kernel)
        b, h, _, w, _, o = y.shape
        return y.reshape(b, 2 * h, 2 * w, o) + bias


class Rescale(nn.Module):
    """One level of the plain-ViT neck (module docstring, step 1)."""

    factor: float

    @nn.compact
    def __call__(self, x, train: bool = False):
        c = x.shape[-1]
        if self.factor == 4:
            x = Upsample2x(c, name="up_0")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             name="bn")(x)
            return Upsample2x(c, name="up_1")(gelu(x))
        if self.factor == 2:
            return Upsample2x(c, name="up_0")(x)
        if self.factor == 1:
            return x
        if self.factor == 0.5:
            return nn.max_pool(x, (2, 2), (2, 2))
        raise ValueError(f"neck rescale: expected one of {PLAIN_RESCALES}, found {self.factor}")


class UPerNetHead(nn.Module):
    """UPerNet over feature levels (finest first) → logits (B, h_0', w_0', K) (module docstring)."""

    num_classes: int
    channels: int = 512
    pool_scales: tuple[int, ...] = POOL_SCALES
    rescales: tuple[float, ...] | None = None
    dropout: float = 0.1

    @nn.compact
    def __call__(self, levels, *, train: bool = False):
        levels = list(levels)
        if len(levels) < 2:
            raise ValueError(f"UPerNetHead takes two or more feature levels, found {len(levels)}")
        if self.rescales is not None:
            if len(self.rescales) != len(levels):
                raise ValueError(f"UPerNetHead: {len(self.rescales)} rescales for "
                                 f"{len(levels)} levels")
            levels = [Rescale(f, name=f"neck_{i}")(x, train)
                      for i, (f, x) in enumerate(zip(self.rescales, levels))]
        deepest = levels[-1]
        pooled = [resize_bilinear(ConvBlock(self.channels, name=f"ppm_{k}")(
            adaptive_avg_pool(deepest, s), train), deepest.shape[1:3])
            for k, s in enumerate(self.pool_scales)]
        laterals = [ConvBlock(self.channels, name=f"lateral_{i}")(x, train)
                    for i, x in enumerate(levels[:-1])]
        laterals.append(ConvBlock(self.channels, 3, name="bottleneck")(
            jnp.concatenate([deepest] + pooled, axis=-1), train))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize_bilinear(laterals[i],
                                                                laterals[i - 1].shape[1:3])
        outs = [ConvBlock(self.channels, 3, name=f"fpn_{i}")(x, train)
                for i, x in enumerate(laterals[:-1])] + [laterals[-1]]
        finest = outs[0].shape[1:3]
        x = jnp.concatenate([resize_bilinear(o, finest) for o in outs], axis=-1)
        x = ConvBlock(self.channels, 3, name="fpn_bottleneck")(x, train)
        x = nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(x)
        return nn.Conv(self.num_classes, (1, 1), name="classifier")(x)
