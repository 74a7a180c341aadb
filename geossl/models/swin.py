"""Swin Transformer v1 (Liu et al., ICCV 2021); parameter names mirror timm's state-dict keys.

``layers.1.blocks.0.attn.qkv`` → ``layers_1/blocks_0/attn/qkv``. Stage i > 0 starts with its patch
merging (``layers_i/downsample``), as in timm; the original Microsoft / SimMIM / GFM code puts the
same layer at the end of stage i-1 (:mod:`geossl.convert.lib.swin_keys` maps both layouts).

Windows: on an axis where a stage is not larger than the window, the window is the stage's size and
there is no shift (timm's ``_calc_window_shift``), e.g. the 7×7 last stage of a 224 px model, window
7. The original code tests ``min(input_resolution) <= window_size`` for both axes at once: the same
for square stages, not where one axis only is that small (such a model exports in timm's layout
only). Other sizes are padded as
timm pads them, so any multiple of the patch size runs (BigEarthNet's 120 px: stages 30, 15, 8, 4):
a block pads its rolled map with zeros at the bottom and right to whole windows (the shifted mask
is computed on the padded map) and crops after; a patch merging pads an odd size by one zero row or
column. The original Microsoft code pads neither, so such a model exports in timm's layout only.
The relative-position index and the shifted-window attention mask are numpy constants computed at
trace time (static shapes).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from geossl.models.family import Family, module_fields
from geossl.models.layers import Dense, Mlp, PatchEmbed, dense_init

LN_EPS = 1e-5  # torch nn.LayerNorm default, used by timm and the original Swin
MASK_VALUE = -100.0  # attention logit added between tokens of different shifted regions

SWIN_CONFIGS = {
    "swin_tiny_patch4_window7_224": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "swin_small_patch4_window7_224": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "swin_base_patch4_window7_224": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    "swin_large_patch4_window7_224": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
}


# ----- static geometry (numpy) -----------------------------------------------------------------
def relative_position_index(wh: int, ww: int) -> np.ndarray:
    """(wh*ww, wh*ww) int64: row of the ((2wh-1)(2ww-1), heads) bias table for each token pair."""
    coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")).reshape(2, -1)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N): query minus key
    return ((rel[0] + wh - 1) * (2 * ww - 1) + rel[1] + ww - 1).astype(np.int64)


def window_and_shift(resolution: tuple[int, int], window: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(window, shift) per axis of a stage of ``resolution``; shift is window // 2 before clamping."""
    win = tuple(min(r, window) for r in resolution)
    shift = tuple(0 if r <= window else window // 2 for r in resolution)
    return win, shift


def shifted_window_mask(resolution: tuple[int, int], window: tuple[int, int],
                        shift: tuple[int, int]) -> np.ndarray:
    """(nW, N, N) float32: 0 within a region of the rolled map, ``MASK_VALUE`` across regions."""
    h, w = resolution
    region = np.zeros((h, w), np.int64)
    bounds = [((0, r - k), (r - k, r - s), (r - s, r)) for r, k, s in zip(resolution, window, shift)]
    label = 0
    for h0, h1 in bounds[0]:
        for w0, w1 in bounds[1]:
            region[h0:h1, w0:w1] = label
            label += 1
    win = _partition(region[None, :, :, None], window)[..., 0][0]  # (nW, N)
    return np.where(win[:, :, None] == win[:, None, :], 0.0, MASK_VALUE).astype(np.float32)


def padded(resolution: tuple[int, int], window: tuple[int, int]) -> tuple[int, int]:
    """``resolution`` rounded up to whole windows (timm's padding before window partition)."""
    return tuple(-(-r // k) * k for r, k in zip(resolution, window))


def _partition(x, window):
    """(B,H,W,C) → (B, nW, wh*ww, C), windows in row-major order (numpy or jax)."""
    b, h, w, c = x.shape
    wh, ww = window
    x = x.reshape(b, h // wh, wh, w // ww, ww, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // wh) * (w // ww), wh * ww, c)


def _reverse(windows, window, h: int, w: int):
    """(B, nW, wh*ww, C) → (B,H,W,C)."""
    b, _, _, c = windows.shape
    wh, ww = window
    x = windows.reshape(b, h // wh, w // ww, wh, ww, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def _drop_path(module: nn.Module, y, rate: float, stochastic: bool):
    """Stochastic depth: drop the residual branch per sample, rescale the kept ones by 1/(1-rate)."""
    if not stochastic or rate <= 0.0:
        return y
    keep = 1.0 - rate
    alive = jax.random.bernoulli(module.make_rng("dropout"), keep, (y.shape[0],) + (1,) * (y.ndim - 1))
    return jnp.where(alive, y / jnp.asarray(keep, y.dtype), jnp.zeros((), y.dtype))


# ----- layers -----------------------------------------------------------------------------------
class WindowAttention(nn.Module):
    """(B, nW, N, C) → (B, nW, N, C): attention inside each window plus relative-position bias."""

    num_heads: int
    window: tuple[int, int]
    qkv_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        """mask: (nW, N, N) float32 added to the logits (shifted windows), or None."""
        b, nw, n, c = x.shape
        heads = self.num_heads
        wh, ww = self.window
        table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                           ((2 * wh - 1) * (2 * ww - 1), heads))
        index = relative_position_index(wh, ww).reshape(-1)
        bias = jnp.take(table, index, axis=0).reshape(n, n, heads).transpose(2, 0, 1)  # (h, N, N)
        if mask is not None:
            bias = bias[None] + jnp.asarray(mask)[:, None]  # (nW, h, N, N)
        qkv = Dense(3 * c, use_bias=self.qkv_bias, dtype=self.dtype, kernel_init=dense_init,
                    name="qkv")(x)
        q, k, v = jnp.moveaxis(qkv.reshape(b, nw, n, 3, heads, c // heads), 3, 0)
        logits = jnp.einsum("bwqhd,bwkhd->bwhqk", q * (c // heads) ** -0.5, k).astype(jnp.float32)
        attn = jax.nn.softmax(logits + bias.astype(jnp.float32), axis=-1).astype(v.dtype)
        y = jnp.einsum("bwhqk,bwkhd->bwqhd", attn, v).reshape(b, nw, n, c)
        return Dense(c, dtype=self.dtype, kernel_init=dense_init, name="proj")(y)


class SwinBlock(nn.Module):
    """(B,H,W,C) → (B,H,W,C): (shifted) window attention and MLP, pre-norm, with drop path.

    ``stochastic`` is a field so ``nn.remat(SwinBlock)`` needs no static argnums (as the ViT).
    """

    num_heads: int
    window: tuple[int, int]
    shift: tuple[int, int] = (0, 0)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path: float = 0.0
    stochastic: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        shifted = any(self.shift)
        y = nn.LayerNorm(LN_EPS, dtype=self.dtype, name="norm1")(x)
        if shifted:
            y = jnp.roll(y, (-self.shift[0], -self.shift[1]), axis=(1, 2))
        hp, wp = padded((h, w), self.window)
        if (hp, wp) != (h, w):
            y = jnp.pad(y, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
        mask = shifted_window_mask((hp, wp), self.window, self.shift) if shifted else None
        y = WindowAttention(self.num_heads, self.window, self.qkv_bias, self.dtype, name="attn")(
            _partition(y, self.window), mask)
        y = _reverse(y, self.window, hp, wp)[:, :h, :w]
        if shifted:
            y = jnp.roll(y, self.shift, axis=(1, 2))
        x = x + _drop_path(self, y, self.drop_path, self.stochastic)
        y = nn.LayerNorm(LN_EPS, dtype=self.dtype, name="norm2")(x)
        y = Mlp(int(c * self.mlp_ratio), self.dtype, name="mlp")(y)
        return x + _drop_path(self, y, self.drop_path, self.stochastic)


class PatchMerging(nn.Module):
    """(B,H,W,C) → (B,⌈H/2⌉,⌈W/2⌉,2C): 2×2 neighbours concatenated [(0,0),(1,0),(0,1),(1,1)]
    (row, column offsets, the original code's x0..x3), LayerNorm, bias-free linear. An odd H or W
    gets one zero row or column at the bottom or right first (timm)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        if h % 2 or w % 2:
            x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
            h, w = h + h % 2, w + w % 2
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5).reshape(b, h // 2, w // 2, 4 * c)
        x = nn.LayerNorm(LN_EPS, dtype=self.dtype, name="norm")(x)
        return Dense(2 * c, use_bias=False, dtype=self.dtype, kernel_init=dense_init, name="reduction")(x)


class SwinStage(nn.Module):
    """timm's ``SwinTransformerStage``: optional patch merging, then ``len(drop_paths)`` blocks."""

    num_heads: int
    window_size: int
    drop_paths: Sequence[float]
    downsample: bool
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    stochastic: bool = False
    dtype: Any = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x):
        """(B,H,W,C) → (patch-merging output or None, stage output)."""
        merged = None
        if self.downsample:
            x = merged = PatchMerging(self.dtype, name="downsample")(x)
        window, shift = window_and_shift(x.shape[1:3], self.window_size)
        block = nn.remat(SwinBlock) if self.remat else SwinBlock
        for j, rate in enumerate(self.drop_paths):
            x = block(self.num_heads, window, shift if j % 2 else (0, 0), self.mlp_ratio, self.qkv_bias,
                      float(rate), self.stochastic, self.dtype, name=f"blocks_{j}")(x)
        return merged, x


class SwinTransformer(nn.Module):
    """Swin Transformer v1 in timm's layout.

    ``__call__(x (B,H,W,C), *, train, stochastic, mask)`` returns
    ``{"embedding" (B,D) mean of the final-normed tokens (timm ``forward_head(pre_logits=True)``),
    "features" [(B,H/4,W/4,c0), ..., (B,H/(4·2^(S-1)),..,D)] stage outputs before the final norm
    (sizes rounded up where a patch merging pads),
    "feature_map" (B,h,w,D) final-normed, "merged" [S-1 maps] the patch-merging outputs of stages
    1.., i.e. the original code's stage outputs (GFM distils the last one, 8·embed_dim wide)}``,
    in the compute ``dtype``; parameters are float32.
    """

    img_size: int | tuple[int, int] = 224
    patch_size: int = 4
    in_chans: int = 3
    embed_dim: int = 96
    depths: Sequence[int] = (2, 2, 6, 2)
    num_heads: Sequence[int] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32
    remat: bool = False

    @property
    def num_features(self) -> int:
        return int(self.embed_dim * 2 ** (len(self.depths) - 1))

    @property
    def stride(self) -> int:
        """Downsampling of the last stage: the patch size, then 2 per patch merging."""
        return self.patch_size * 2 ** (len(self.depths) - 1)

    def stage_grid(self, stage: int) -> tuple[float, float]:
        """(origin, pitch) in input pixels of stage ``stage``'s map (1-based): cell j covers the
        pixels [pitch·j, pitch·(j + 1)), centred at origin + pitch·j with origin pitch / 2."""
        pitch = float(self.patch_size * 2 ** (stage - 1))
        return pitch / 2, pitch

    def stage_windows(self, img_size: int | tuple[int, int] | None = None):
        """Per stage: ((h, w) feature size, (wh, ww) window, (sh, sw) shift) for ``img_size``;
        raises if the size is not a multiple of the patch size. A patch merging halves a size
        rounding up; a size that is not a multiple of its window is padded in each block."""
        size = self.img_size if img_size is None else img_size
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"Swin input: expected H, W multiples of patch_size {p}, found {(h, w)}")
        res, out = (h // p, w // p), []
        for i in range(len(self.depths)):
            if i:
                res = ((res[0] + 1) // 2, (res[1] + 1) // 2)
            out.append((res, *window_and_shift(res, self.window_size)))
        return out

    @nn.compact
    def __call__(self, x, *, train: bool = False, stochastic: bool = False, mask=None):
        """x (B,H,W,C); train: unused (no BatchNorm), kept for the common interface; stochastic:
        drop path on (``"dropout"`` rng); mask (B,H/p,W/p) bool: those patch embeddings (after the
        patch-embed norm) become ``mask_token`` (SimMIM's ``SwinTransformerForSimMIM``)."""
        if len(self.depths) != len(self.num_heads):
            raise ValueError(f"Swin: depths {tuple(self.depths)} and num_heads {tuple(self.num_heads)} "
                             "differ in length")
        b, h, w, c = x.shape
        if c != self.in_chans:
            raise ValueError(f"Swin input: expected (B,H,W,{self.in_chans}), found {tuple(x.shape)}")
        self.stage_windows((h, w))
        d = self.embed_dim
        mask_token = self.param("mask_token", nn.initializers.truncated_normal(0.02), (1, 1, d))
        x = PatchEmbed(d, self.patch_size, self.dtype, norm_eps=LN_EPS, name="patch_embed")(x)
        if mask is not None:
            if tuple(mask.shape) != x.shape[:3]:
                raise ValueError(f"mask: expected shape {x.shape[:3]} (batch, H/{self.patch_size}, "
                                 f"W/{self.patch_size}), found {tuple(mask.shape)}")
            x = jnp.where(mask[..., None], mask_token[0].astype(x.dtype), x)
        rates = np.split(np.linspace(0.0, self.drop_path_rate, sum(self.depths)),
                         np.cumsum(self.depths)[:-1])  # timm: linear over all blocks
        features, merged = [], []
        for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
            m, x = SwinStage(heads, self.window_size, tuple(float(r) for r in rates[i]), i > 0, self.mlp_ratio, self.qkv_bias,
                          stochastic, self.dtype, self.remat, name=f"layers_{i}")(x)
            features.append(x)
            if m is not None:
                merged.append(m)
        x = nn.LayerNorm(LN_EPS, dtype=self.dtype, name="norm")(x)
        return {"embedding": x.mean(axis=(1, 2)), "features": features, "feature_map": x, "merged": merged}


def swin(name: str, **overrides) -> SwinTransformer:
    """The Swin ``name`` of :data:`SWIN_CONFIGS` (patch 4, window 7, 224 px), any field overridden
    (in_chans, img_size, window_size, embed_dim, depths, num_heads, ...)."""
    if name not in SWIN_CONFIGS:
        raise ValueError(f"unknown Swin {name!r}: expected one of {', '.join(SWIN_CONFIGS)}")
    kw = {**SWIN_CONFIGS[name], **overrides}
    for key in ("depths", "num_heads"):
        kw[key] = tuple(int(v) for v in kw[key])
    return SwinTransformer(**kw)


FAMILY = Family(
    name="swin", names=tuple(SWIN_CONFIGS), build=swin, kwargs=module_fields(SwinTransformer),
    first_layer=("patch_embed", "proj"), mask_token=True, feature_maps=True, merging=True)
