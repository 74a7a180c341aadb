"""Vision Transformer in the DINOv2 layout; parameter names mirror the PyTorch keys.

Tokens are ``[cls, registers, patches]``; ``pos_embed`` (1, 1+G*G, D) covers cls and patches, not
the registers (DINOv2). An input whose patch grid differs from ``img_size``'s is served by resizing
the patch part of ``pos_embed`` at call time, by ``pos_embed_resize``: "timm" (default) bicubic
with antialiasing, exactly timm's ``resample_abs_pos_embed`` (``dynamic_img_size``); "dinov2"
exactly DINOv2's ``interpolate_pos_encoding`` (PerA's local crops), bicubic by
``scale_factor=(g+0.1)/G0`` without antialiasing (``layers.resize_pos_table``). At 28 → 6 the two
differ by 26% (relative norm, on a 2-D sin-cos table).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from geossl.models.family import Family, module_fields
from geossl.models.layers import (LN_EPS, POS_EMBED_RESIZE, Block, PatchEmbed, PatchGrid,
                                  append_inserted_tokens, check_token_options, drop_path_rates,
                                  positioned_patch_tokens)

VIT_CONFIGS = {
    # PerA-style small model: patch 16, no LayerScale (like timm vit_tiny_patch16_224)
    "vit_tiny_patch16": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, layerscale_init=None),
    # ViT-B/16 without LayerScale (timm vit_base_patch16_224; PerA's backbone)
    "vit_base_patch16": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, layerscale_init=None),
    # DINOv2 ViT-S/B/L/14: LayerScale 1e-5
    "vit_small_patch14": dict(patch_size=14, embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch14": dict(patch_size=14, embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch14": dict(patch_size=14, embed_dim=1024, depth=24, num_heads=16),
}


class VisionTransformer(PatchGrid, nn.Module):
    """DINOv2-layout ViT.

    ``__call__(x (B,H,W,C), *, train, stochastic, keep_idx, mask, insert_idx, insert_at_block,
    return_layers)``
    returns ``{"embedding" (B,D), "cls_token" (B,D) (same), "patch_tokens" (B,M,D)[, "intermediates"]}``,
    all final-normed, in the compute ``dtype``; parameters are float32.
    """

    img_size: int | tuple[int, int] = 224
    patch_size: int = 14
    in_chans: int = 3
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layerscale_init: float | None = 1e-5  # None: no LayerScale
    num_register_tokens: int = 0
    drop_path_rate: float = 0.0
    drop_path_uniform: bool = False  # True: drop_path_rate in every block (PerA); False: linear
    drop_path_subset: bool = False  # True: DINOv2's batch-subset stochastic depth above 0.1 (PerA)
    dtype: Any = jnp.float32
    remat: bool = False
    pos_embed_resize: str = "timm"  # another patch grid: "timm" | "dinov2" (resize_pos_table)

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.num_register_tokens

    @nn.compact
    def __call__(self, x, *, train: bool = False, stochastic: bool = False, keep_idx=None,
                 mask=None, insert_idx=None,
                 insert_at_block: int | None = None, return_layers: Sequence[int] = ()):
        """x (B,H,W,C), H and W multiples of ``patch_size``; N = (H/p)(W/p) patch positions.

        train: accepted for the common model interface (a ViT has no BatchNorm).
        stochastic: drop path on (needs a ``"dropout"`` rng); teachers and evaluation leave it off.

        keep_idx (B,K) int: forward only these patch positions (gathered after ``pos_embed``).
        mask (B,N) bool: masked patch embeddings become ``mask_token`` before ``pos_embed``.
        insert_idx (B,L) int with insert_at_block=k: before block k, append L tokens
            ``mask_token + pos_embed[position]``.
        return_layers: block indices (negative allowed) whose final-normed outputs (B,1+R+M,D)
            are returned, in that order, under "intermediates".
        "patch_tokens" (B,M,D): M = N, or K (kept) followed by L (inserted).
        """
        d, p, r = self.embed_dim, self.patch_size, self.num_register_tokens
        b, h, w, c = x.shape
        if c != self.in_chans or h % p or w % p:
            raise ValueError(f"ViT input: expected (B,H,W,{self.in_chans}) with H, W multiples of {p}, "
                             f"found {tuple(x.shape)}")
        grid = (h // p, w // p)
        n = grid[0] * grid[1]
        layers = check_token_options(b, n, self.depth, keep_idx, mask, return_layers, insert_idx,
                                     insert_at_block)

        g0 = self.grid_size
        if self.pos_embed_resize not in POS_EMBED_RESIZE:
            raise ValueError(f"pos_embed_resize: expected one of {POS_EMBED_RESIZE}, found "
                             f"{self.pos_embed_resize!r}")
        cls_token = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, d))
        pos_embed = self.param("pos_embed", nn.initializers.truncated_normal(0.02),
                               (1, 1 + g0[0] * g0[1], d))
        mask_token = self.param("mask_token", nn.initializers.zeros, (1, d))

        tokens = PatchEmbed(d, p, self.dtype, name="patch_embed")(x).reshape(b, n, d)
        tokens, patch_pos = positioned_patch_tokens(tokens, pos_embed[0, 1:], grid, g0,
                                                    self.pos_embed_resize, mask, mask_token,
                                                    keep_idx)

        prefix = [jnp.broadcast_to(cls_token + pos_embed[:, :1], (b, 1, d))]
        if r:
            registers = self.param("register_tokens", nn.initializers.normal(1e-6), (1, r, d))
            prefix.append(jnp.broadcast_to(registers, (b, r, d)))
        x = jnp.concatenate([t.astype(tokens.dtype) for t in prefix] + [tokens], axis=1)

        block = nn.remat(Block) if self.remat else Block
        rates = self.drop_path_rates()
        norm = nn.LayerNorm(LN_EPS, dtype=self.dtype, name="norm")
        kept = {}
        for i in range(self.depth):
            if insert_idx is not None and i == insert_at_block:
                x = append_inserted_tokens(x, patch_pos, mask_token, insert_idx)
            x = block(self.num_heads, self.mlp_ratio, self.qkv_bias, self.layerscale_init,
                      float(rates[i]), stochastic, self.dtype, self.drop_path_subset,
                      name=f"blocks_{i}")(x)
            if i in layers:
                kept[i] = norm(x)
        x = norm(x)
        out = {"embedding": x[:, 0], "cls_token": x[:, 0], "patch_tokens": x[:, 1 + r:]}
        if layers:
            out["intermediates"] = [kept[i] for i in layers]
        return out

    def drop_path_rates(self) -> np.ndarray:
        """(depth,) drop-path rate of each block: timm / DINOv2's linear 0 → ``drop_path_rate``, or
        ``drop_path_rate`` in every block with ``drop_path_uniform`` (PerA)."""
        return drop_path_rates(self.depth, self.drop_path_rate, self.drop_path_uniform)


def vit(name: str, **overrides) -> VisionTransformer:
    """The ViT ``name`` of :data:`VIT_CONFIGS`, any field overridden (in_chans, img_size, depth, ...)."""
    if name not in VIT_CONFIGS:
        raise ValueError(f"unknown ViT {name!r}: expected one of {', '.join(VIT_CONFIGS)}")
    return VisionTransformer(**{**VIT_CONFIGS[name], **overrides})


FAMILY = Family(
    name="vit", names=tuple(VIT_CONFIGS), build=vit, kwargs=module_fields(VisionTransformer),
    first_layer=("patch_embed", "proj"), keep_tokens=True, insert_tokens=True, mask_token=True,
    patch_tokens=True, register_tokens=True)
