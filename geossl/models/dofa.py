"""DOFA (Xiong et al. 2024, "Neural Plasticity-Inspired Foundation Model for Observing the Earth
Crossing Modalities"): a ViT whose patch embedding is generated from the bands' wavelengths.

Parameter names and numbers follow ``torchgeo.models.DOFA`` (0.8.1). Each band's central
wavelength λ (µm) becomes 128 Fourier features of λ·1000 (nm), then a residual MLP (``fclayer``)
refines them. A one-layer post-norm transformer (``weight_generator``) reads
[128 learnt weight tokens, the C band tokens, 1 bias token]. Each band's output (plus its input)
gives that band's p×p×D slice of the patch kernel (``fc_weight``), and the bias token gives the
bias (``fc_bias``); both are scaled by 0.01. One set of parameters therefore
embeds any subset of bands in any order. The kernel is applied like torchgeo's
``F.conv2d(stride=p, padding=1)``: patch (i, j) covers pixels ip−1 .. ip+p−2 (zero above and
left of the image), and the last pixel row and column are never read. Then come ViT blocks
(timm's, without LayerScale), and ``forward_features``: the mean of the patch tokens after the
last block, normalised by ``fc_norm``.

torchgeo keeps ``pos_embed`` fixed (``requires_grad=False``); here it is a parameter like the
ViT's. An objective that wants it fixed stops its gradient, as MAE does.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from geossl.models.family import Family, module_fields
from geossl.models.layers import (LN_EPS, POS_EMBED_RESIZE, Attention, Block, PatchGrid, gelu,
                                  append_inserted_tokens, check_token_options, drop_path_rates,
                                  positioned_patch_tokens)

DOFA_CONFIGS = {
    "dofa_small_patch16_224": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "dofa_base_patch16_224": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "dofa_large_patch16_224": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    "dofa_huge_patch14_224": dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
}

#: The hypernetwork's fixed sizes (torchgeo's ``DOFAEmbedding``): wavelength feature width,
#: learnt weight tokens, attention heads, feed-forward width (torch's TransformerEncoderLayer
#: default), LayerNorm eps (torch's default) and the scale of the generated kernel and bias.
WAVE_DIM = 128
WEIGHT_TOKENS = 128
GENERATOR_HEADS = 4
GENERATOR_FFN = 2048
GENERATOR_LN_EPS = 1e-5
KERNEL_SCALE = 0.01

_xavier = nn.initializers.xavier_uniform()
_bias_init = nn.initializers.constant(0.01)


def wavelength_features(wavelengths, dim: int = WAVE_DIM):
    """(C,) wavelengths (µm) → (C, dim) float32 [sin(λ_nm·ω_k), cos(λ_nm·ω_k)],
    ω_k = 10000^(−k/(dim/2)), k = 0..dim/2−1, λ_nm = 1000·λ."""
    # torchgeo's float32 steps: 10000^(k/(dim/2)) rounded to float32, then its float32 reciprocal
    # (one rounding of 1/10000^x instead moves some ω_k by an ulp: 1e-4 at λ_nm = 3750)
    power = (10000.0 ** (np.arange(dim // 2) / (dim / 2.0))).astype(np.float32)
    omega = np.float32(1.0) / power
    angle = (wavelengths.astype(jnp.float32) * 1000.0)[:, None] * omega[None]
    return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=1)


class FCResLayer(nn.Module):
    """x + relu(w2(relu(w1(x)))) on (C, WAVE_DIM)."""

    @nn.compact
    def __call__(self, x):
        y = nn.relu(nn.Dense(x.shape[-1], kernel_init=_xavier, bias_init=_bias_init, name="w1")(x))
        y = nn.relu(nn.Dense(x.shape[-1], kernel_init=_xavier, bias_init=_bias_init, name="w2")(y))
        return x + y


class EncoderLayer(nn.Module):
    """torch's ``TransformerEncoderLayer`` (post-norm, exact GELU, no dropout) on (1, T, E)."""

    @nn.compact
    def __call__(self, x):
        e = x.shape[-1]
        y = Attention(GENERATOR_HEADS, name="self_attn")(x)
        x = nn.LayerNorm(GENERATOR_LN_EPS, name="norm1")(x + y)
        y = nn.Dense(GENERATOR_FFN, kernel_init=_xavier, bias_init=_bias_init, name="linear1")(x)
        y = nn.Dense(e, kernel_init=_xavier, bias_init=_bias_init,
                     name="linear2")(gelu(y))
        return nn.LayerNorm(GENERATOR_LN_EPS, name="norm2")(x + y)


class TransformerEncoder(nn.Module):
    """``num_layers`` :class:`EncoderLayer` named ``layers_i`` (torch ``layers.i``)."""

    num_layers: int = 1

    @nn.compact
    def __call__(self, x):
        for i in range(self.num_layers):
            x = EncoderLayer(name=f"layers_{i}")(x)
        return x


class WeightGenerator(nn.Module):
    """Band features (C, WAVE_DIM) → (kernel rows (C, p·p·D), bias (D,)), both unscaled."""

    kernel_size: int
    embed_dim: int

    @nn.compact
    def __call__(self, waves):
        weight_tokens = self.param("weight_tokens", nn.initializers.normal(0.02),
                                   (WEIGHT_TOKENS, WAVE_DIM))
        bias_token = self.param("bias_token", nn.initializers.normal(0.02), (1, WAVE_DIM))
        tokens = jnp.concatenate([weight_tokens, waves, bias_token], axis=0)
        out = TransformerEncoder(name="transformer_encoder")(tokens[None])[0]
        band_out = out[WEIGHT_TOKENS:-1] + waves
        weights = nn.Dense(self.kernel_size ** 2 * self.embed_dim, kernel_init=_xavier,
                           bias_init=_bias_init, name="fc_weight")(band_out)
        bias = nn.Dense(self.embed_dim, kernel_init=_xavier, bias_init=_bias_init,
                        name="fc_bias")(out[-1])
        return weights, bias


class DOFAEmbedding(nn.Module):
    """(B,H,W,C) with wavelengths (C,) → (B,H/p,W/p,D) by the generated p×p kernel."""

    embed_dim: int
    patch_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, wavelengths):
        p, d, c = self.patch_size, self.embed_dim, x.shape[-1]
        waves = FCResLayer(name="fclayer")(wavelength_features(wavelengths))
        weights, bias = WeightGenerator(p, d, name="weight_generator")(waves)
        # rows (C, p·p·D) → (C, p, p, D) → HWIO (p, p, C, D), as torchgeo's view + permute
        kernel = jnp.transpose(weights.reshape(c, p, p, d), (1, 2, 0, 3)) * KERNEL_SCALE
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), kernel.astype(self.dtype), (p, p), ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + (bias * KERNEL_SCALE).astype(self.dtype)


class DOFA(PatchGrid, nn.Module):
    """DOFA in torchgeo's layout (global pool + ``fc_norm``).

    ``__call__(x (B,H,W,C), *, wavelengths (C,), train, stochastic, keep_idx, mask, insert_idx,
    insert_at_block, return_layers)`` returns ``{"embedding" (B,D), "cls_token" (B,D),
    "patch_tokens" (B,M,D) [, "intermediates"]}``. The embedding is ``fc_norm`` of the mean of the
    patch tokens (torchgeo's ``forward_features``; inserted tokens included). The class and patch
    tokens are each normalised by ``fc_norm`` too (DOFA has no other final norm). Outputs come in
    the compute ``dtype``; parameters and the hypernetwork are float32.
    """

    img_size: int | tuple[int, int] = 224
    patch_size: int = 16
    in_chans: int = 3  # bands of the input ``init`` sees; the call takes any C with its wavelengths
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0
    drop_path_uniform: bool = False  # True: drop_path_rate in every block; False: linear from 0
    drop_path_subset: bool = False  # True: DINOv2's batch-subset stochastic depth above 0.1
    dtype: Any = jnp.float32
    remat: bool = False
    pos_embed_resize: str = "timm"  # another patch grid: "timm" | "dinov2" (resize_pos_table)

    @property
    def num_prefix_tokens(self) -> int:
        return 1

    @nn.compact
    def __call__(self, x, *, wavelengths=None, train: bool = False, stochastic: bool = False,
                 keep_idx=None, mask=None, insert_idx=None, insert_at_block: int | None = None,
                 return_layers: Sequence[int] = ()):
        """x (B,H,W,C), H and W multiples of ``patch_size``; N = (H/p)(W/p) patch positions.

        wavelengths (C,): central wavelength of each band of ``x`` in µm
            (``geossl.data.bands.wavelengths``). Required, except by ``init``: no parameter
            depends on them.
        train: accepted for the common model interface (no BatchNorm).
        stochastic: drop path on (needs a ``"dropout"`` rng).
        keep_idx (B,K) int: forward only these patch positions (gathered after ``pos_embed``).
        mask (B,N) bool: masked patch embeddings become ``mask_token`` before ``pos_embed``.
        insert_idx (B,L) int with insert_at_block=k: before block k, append L tokens
            ``mask_token + pos_embed[position]`` (as the ViT; PerA's learn positions).
        return_layers: block indices (negative allowed) whose outputs (B,1+M,D), normalised by
            ``fc_norm``, are returned in that order under "intermediates".
        """
        del train
        d, p = self.embed_dim, self.patch_size
        b, h, w, c = x.shape
        if p < 3 or h % p or w % p:
            raise ValueError(f"DOFA input: expected (B,H,W,C) with H, W multiples of patch_size={p} "
                             f"(>= 3: torchgeo's padding-1 patch conv), found {tuple(x.shape)}")
        wavelengths = self._wavelengths(wavelengths, c)
        grid = (h // p, w // p)
        n = grid[0] * grid[1]
        layers = check_token_options(b, n, self.depth, keep_idx, mask, return_layers, insert_idx,
                                     insert_at_block)
        if self.pos_embed_resize not in POS_EMBED_RESIZE:
            raise ValueError(f"pos_embed_resize: expected one of {POS_EMBED_RESIZE}, found "
                             f"{self.pos_embed_resize!r}")

        g0 = self.grid_size
        cls_token = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, d))
        pos_embed = self.param("pos_embed", nn.initializers.truncated_normal(0.02),
                               (1, 1 + g0[0] * g0[1], d))
        mask_token = self.param("mask_token", nn.initializers.zeros, (1, d))

        tokens = DOFAEmbedding(d, p, self.dtype, name="patch_embed")(x, wavelengths).reshape(b, n, d)
        tokens, patch_pos = positioned_patch_tokens(tokens, pos_embed[0, 1:], grid, g0,
                                                    self.pos_embed_resize, mask, mask_token,
                                                    keep_idx)
        prefix = jnp.broadcast_to(cls_token + pos_embed[:, :1], (b, 1, d)).astype(tokens.dtype)
        x = jnp.concatenate([prefix, tokens], axis=1)

        block = nn.remat(Block) if self.remat else Block
        rates = drop_path_rates(self.depth, self.drop_path_rate, self.drop_path_uniform)
        fc_norm = nn.LayerNorm(LN_EPS, dtype=self.dtype, name="fc_norm")
        kept = {}
        for i in range(self.depth):
            if insert_idx is not None and i == insert_at_block:
                x = append_inserted_tokens(x, patch_pos, mask_token, insert_idx)
            x = block(self.num_heads, self.mlp_ratio, True, None, float(rates[i]), stochastic,
                      self.dtype, self.drop_path_subset, name=f"blocks_{i}")(x)
            if i in layers:
                kept[i] = fc_norm(x)
        out = {"embedding": fc_norm(x[:, 1:].mean(axis=1)), "cls_token": fc_norm(x[:, 0]),
               "patch_tokens": fc_norm(x[:, 1:])}
        if layers:
            out["intermediates"] = [kept[i] for i in layers]
        return out

    def _wavelengths(self, wavelengths, c: int):
        """(C,) float32 wavelengths; None is allowed only while initialising."""
        if wavelengths is None:
            if self.is_initializing():
                return jnp.ones((c,), jnp.float32)
            raise ValueError(f"DOFA: wavelengths= expected ({c},), the central wavelength (µm) of "
                             "each band of x (geossl.data.bands.wavelengths); found none")
        wavelengths = jnp.asarray(wavelengths, jnp.float32)
        if wavelengths.shape != (c,):
            raise ValueError(f"DOFA: wavelengths expected shape ({c},), one per band of x, found "
                             f"{tuple(wavelengths.shape)}")
        return wavelengths


def dofa(name: str, **overrides) -> DOFA:
    """The DOFA ``name`` of :data:`DOFA_CONFIGS`, any field overridden (depth, img_size, ...)."""
    if name not in DOFA_CONFIGS:
        raise ValueError(f"unknown DOFA {name!r}: expected one of {', '.join(DOFA_CONFIGS)}")
    return DOFA(**{**DOFA_CONFIGS[name], **overrides})


FAMILY = Family(
    name="dofa", names=tuple(DOFA_CONFIGS), build=dofa, kwargs=module_fields(DOFA),
    first_layer=("patch_embed", "weight_generator", "fc_weight"), keep_tokens=True,
    insert_tokens=True, mask_token=True, patch_tokens=True, wavelengths=True)
