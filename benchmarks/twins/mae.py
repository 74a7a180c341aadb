"""MAE's step in PyTorch: a timm ViT/16 encoder (no LayerScale, fixed sine-cosine position table
without gradient) run on the kept patches only (``common.vit_tokens`` gathers them after the
position table, as geossl does), a per-sample random mask drawn per step with geossl's counts
(round(mask_ratio·N) masked, the rest kept), the decoder of config.objective (Linear embed, its mask
token scattered at the masked positions, fixed 2-D sine-cosine positions with a zero class row,
timm pre-norm blocks, LayerNorm, Linear to p·p·C pixels), the norm_pix MSE averaged over the
masked patches, AdamW of the config (decay on matrices only).

Sizes (both sides, ``configure``): 13 bands at --img (224: 196 patches, 49 kept), the config's
ViT-B/16 by default (about 500 GFLOP per step at batch 8), ViT-S/16 or ViT-Ti/16, decoder 8 blocks
of width 512 (16 heads).
"""

from __future__ import annotations

import functools

import numpy as np

from geossl.masking import kept_count
from geossl.patches import sincos_pos_embed
from twins import common

ARCHS = {"vit_base_patch16_224": "configs/mae_vit_b.py",
         "vit_small_patch16_224": "configs/mae_vit_b.py",
         "vit_tiny_patch16_224": "configs/mae_vit_b.py"}
NOTE = ("mae: the config's ViT-B/16 (default) or ViT-S/16 on the kept 25% of the patches, "
        "decoder 8 × 512 on every position")


def configure(config, arch, args) -> None:
    """The ViT/16 of ``arch`` (no LayerScale, geossl's names in ``common.VIT16``)."""
    with config.unlocked():
        config.model.update(common.VIT16[arch])


def sincos_table(torch, dim, grid):
    """(1, 1 + gh·gw, dim) fixed position table, class row zero (geossl's sincos_pos_embed)."""
    table = np.concatenate([np.zeros((1, dim), np.float32), sincos_pos_embed(dim, grid)])
    return torch.from_numpy(table)[None]


def decoder(torch, in_dim, out_dim, grid, o):
    """MAEDecoder's modules: decoder_embed, mask_token, pos_embed (fixed), blocks, norm, pred."""
    from timm.models.vision_transformer import Block
    nn, e = torch.nn, int(o.decoder_dim)
    dec = nn.ModuleDict(dict(
        embed=nn.Linear(in_dim, e),
        blocks=nn.Sequential(*[Block(e, int(o.decoder_heads), mlp_ratio=4.0, qkv_bias=True,
                                     norm_layer=functools.partial(nn.LayerNorm, eps=1e-6))
                               for _ in range(int(o.decoder_depth))]),
        norm=nn.LayerNorm(e, eps=1e-6), pred=nn.Linear(e, out_dim)))
    dec.mask_token = nn.Parameter(0.02 * torch.randn(1, 1, e))
    dec.register_buffer("pos_embed", sincos_table(torch, e, grid))
    return dec


def decode(torch, dec, tokens, keep_idx, n):
    """tokens (B, 1+K, D) of the kept positions keep_idx (B, K) → pixel predictions (B, n, P)."""
    x = dec["embed"](tokens)
    b, e = x.shape[0], x.shape[-1]
    index = keep_idx[..., None].expand(-1, -1, e)
    full = dec.mask_token.expand(b, n, e).scatter(1, index, x[:, 1:])
    x = dec["blocks"](torch.cat([x[:, :1], full], dim=1) + dec.pos_embed)
    return dec["pred"](dec["norm"](x))[:, 1:]


def torch_side(torch, args, config, host_batch) -> dict:
    o = config.objective
    net, dim, lib = common.backbone(torch, args.arch, args.img, args.bands)
    p, grid = net.patch_embed.patch_size[0], tuple(net.patch_embed.grid_size)
    n = grid[0] * grid[1]
    with torch.no_grad():
        net.pos_embed.copy_(sincos_table(torch, dim, grid))
    net.pos_embed.requires_grad_(False)
    dec = decoder(torch, dim, p * p * args.bands, grid, o)
    for module in (net, dec):
        module.train()
    opt = common.adamw(torch, (net, dec), config)
    x = common.images(torch, host_batch, "image")
    kept = kept_count(float(o.mask_ratio), n)
    out = {}

    def step():
        keep_idx, mask_idx = common.random_split(torch, x.shape[0], n,
                                                 (kept, n - kept))
        pred = decode(torch, dec, common.vit_tokens(torch, net, x, keep_idx), keep_idx, n)
        target = common.patchify(x, p)
        if o.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)  # unbiased
            target = (target - mean) / (var + 1e-6).sqrt()
        masked = torch.zeros(x.shape[0], n).scatter_(1, mask_idx, 1.0)
        loss = (((pred - target) ** 2).mean(-1) * masked).sum() / masked.sum()
        out["loss"] = common.descend(torch, opt, loss, config)

    return dict(lib=lib, step=step, loss=lambda: float(out["loss"]))
