"""MAE: masked autoencoders (He et al., CVPR 2022), the baseline of SatMAE, Prithvi and SSL4EO-S12.

The encoder (a ViT, or DOFA with the batch's wavelengths) sees the 25% of the patches a
per-sample random permutation keeps (``masking.keep_mask_indices``), position embeddings added
before the patches are dropped. The decoder embeds its final-normed tokens, class token first
(``decoder_embed``), puts them back at their positions among copies of its ``mask_token``, adds
fixed 2-D sine-cosine position embeddings (class row zero), runs ``decoder_depth`` pre-norm blocks
and predicts each patch's p·p·C pixels (``decoder_pred``) in one band order (``in_chans`` bands,
whatever the encoder). Loss: the mean squared error per patch, averaged over the masked patches;
with ``norm_pix_loss`` each target patch is first standardised (its mean, unbiased variance + 1e-6).

The encoder's position embedding starts as MAE's fixed sine-cosine table and is kept fixed (its
gradient is stopped; it is outside weight decay, so AdamW leaves it unchanged). Views: one random
resized crop (scale 0.2–1) and a horizontal flip of one acquisition, normalised (``MAEViews``).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from geossl import masking
from geossl.data import augment, views
from geossl.models.from_config import create_from_config
from geossl.models.layers import LN_EPS, Block
from geossl.objectives.base import Fields, Objective, Variables, register
from geossl.patches import patchify, sincos_pos_embed


@dataclasses.dataclass(frozen=True, kw_only=True)
class MAEViews(views.BandSpec, views.CropSpec):
    """MAE's views: RandomResizedCrop(img_size, scale 0.2–1) + horizontal flip, normalised."""

    img_size: int = 224
    crop_scale: tuple[float, float] = (0.2, 1.0)


def config_fields() -> dict:
    """``config.data`` fields of MAE's views (``img_size`` is ``config.model.img_size``)."""
    return views.config_fields(MAEViews, fixed=("img_size",))


def place_tokens(kept, mask_token, keep_idx, n: int):
    """kept (B,K,E) put at positions keep_idx (B,K) of n, the others mask_token (1,1,E) → (B,n,E)."""
    b, e = kept.shape[0], kept.shape[-1]
    full = jnp.broadcast_to(mask_token.astype(kept.dtype), (b, n, e))
    return full.at[jnp.arange(b)[:, None], keep_idx].set(kept)


class MAEDecoder(nn.Module):
    """Tokens (B, 1+K, D) of the kept positions keep_idx (B, K) → pixel predictions (B, N, out_dim)."""

    grid: tuple[int, int]
    out_dim: int
    embed_dim: int = 512
    depth: int = 8
    num_heads: int = 16
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens, keep_idx):
        n = self.grid[0] * self.grid[1]
        x = nn.Dense(self.embed_dim, dtype=self.dtype, name="decoder_embed")(tokens)
        mask_token = self.param("mask_token", nn.initializers.normal(0.02), (1, 1, self.embed_dim))
        full = place_tokens(x[:, 1:], mask_token, keep_idx, n)
        pos = np.concatenate([np.zeros((1, self.embed_dim), np.float32),
                              sincos_pos_embed(self.embed_dim, self.grid)])
        x = jnp.concatenate([x[:, :1], full], axis=1) + jnp.asarray(pos, x.dtype)
        for i in range(self.depth):
            x = Block(self.num_heads, 4.0, True, None, 0.0, False, self.dtype,
                      name=f"decoder_blocks_{i}")(x)
        x = nn.LayerNorm(LN_EPS, dtype=self.dtype, name="decoder_norm")(x)
        return nn.Dense(self.out_dim, dtype=self.dtype, name="decoder_pred")(x)[:, 1:]


def reconstruction_loss(pred, target, masked, norm_pix: bool):
    """pred, target (B, N, P); masked (B, N) in {0, 1} → mean over masked patches of the per-patch
    mean squared error; ``norm_pix``: target standardised per patch (unbiased variance + 1e-6)."""
    target = target.astype(jnp.float32)
    if norm_pix:
        mean = target.mean(axis=-1, keepdims=True)
        var = target.var(axis=-1, keepdims=True, ddof=1)
        target = (target - mean) / jnp.sqrt(var + 1e-6)
    per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)
    return jnp.sum(per_patch * masked) / jnp.sum(masked)


@register("mae")
class MAE(Objective):
    """MAE on a ViT (config: configs/mae_vit_b.py); no teacher."""

    def __init__(self, config):
        super().__init__(config)
        f = Fields(config.objective)
        self.require_backbone("keep_tokens", "patch_tokens", why="MAE's sparse encoder")
        self.mask_ratio = f.number("mask_ratio", "(0, 1)")
        self.norm_pix = f.flag("norm_pix_loss")
        self.backbone = create_from_config(config.model)
        p = self.patch_size = int(self.backbone.patch_size)
        self.grid = self.backbone.grid_size
        self.decoder = MAEDecoder(
            self.grid, p * p * int(self.backbone.in_chans),
            embed_dim=f.integer("decoder_dim", "[1, inf)"),
            depth=f.integer("decoder_depth", "[1, inf)"),
            num_heads=f.integer("decoder_heads", "[1, inf)"), dtype=self.backbone.dtype)
        self.view_config = views.from_config(MAEViews, config.data, img_size=config.model.img_size)

    @property
    def fixed_bands(self) -> tuple[str, ...]:
        """The pixel decoder predicts ``config.data.bands``, in that order."""
        return tuple(self.config.data.bands)

    def make_views(self, record, rng: np.random.Generator):
        """image (S, S, C) float32: one random crop of one random acquisition, normalised."""
        image = augment.record_image(record)
        x = image[views.pick_one(rng, image.shape[0])]
        cfg = self.view_config
        params = augment.ViewParams(**cfg.draw(rng, x.shape[0], x.shape[1]))
        return {"image": views.render(cfg, x, cfg.band_plan(record), params, cfg.img_size,
                                      into="image")}

    def init(self, rng, batch) -> Variables:
        r_enc, r_dec = jax.random.split(rng)
        x = jnp.asarray(batch["image"])[:1]
        kw = self.init_kwargs(batch)
        backbone = self.backbone.init({"params": r_enc, "dropout": r_enc}, x, **kw)["params"]
        d = backbone["pos_embed"].shape[-1]
        table = np.concatenate([np.zeros((1, d), np.float32), sincos_pos_embed(d, self.grid)])
        backbone = dict(backbone, pos_embed=jnp.asarray(table)[None])
        decoder = self.decoder.init(r_dec, jnp.zeros((1, 2, d)), jnp.zeros((1, 1), jnp.int32))
        return Variables(params={"backbone": backbone, "decoder": decoder["params"]})

    def loss(self, params, teacher, extra, batch, rng, step):
        x = batch["image"].astype(jnp.float32)
        r_mask, r_drop = jax.random.split(rng)
        n = self.grid[0] * self.grid[1]
        keep_idx, mask_idx = masking.keep_mask_indices(r_mask, x.shape[0], n, self.mask_ratio)
        backbone = dict(params["backbone"],
                        pos_embed=jax.lax.stop_gradient(params["backbone"]["pos_embed"]))
        out = self.backbone.apply({"params": backbone}, x, keep_idx=keep_idx, stochastic=True,
                                  rngs={"dropout": r_drop}, **self.backbone_kwargs(batch))
        tokens = jnp.concatenate([out["cls_token"][:, None], out["patch_tokens"]], axis=1)
        pred = self.decoder.apply({"params": params["decoder"]}, tokens, keep_idx)
        masked = masking.indices_to_mask(mask_idx, n).astype(jnp.float32)
        loss = reconstruction_loss(pred, patchify(x, self.patch_size), masked, self.norm_pix)
        return loss, {"metrics": {"loss_mae": loss}, "extra": extra}
