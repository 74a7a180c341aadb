"""GFM's step in PyTorch: a timm Swin student whose masked patch embeddings become its mask token
(inserted after timm's patch embedding, the stages then called one by one), SimMIM's decoder (a
Linear on the final-normed map to stride²·C, pixel shuffle) and masked L1 on the normalised input,
a frozen timm Swin teacher (eval mode, no grad, never updated) on the unmasked crop's RGB bands
resized with corners aligned and mapped by config.teacher.input_scale / input_offset, the average
pool of both networks' last patch-merging output (the teacher stops there, as XLA drops its
unused last stage), a Linear projector with bias, −mean cosine distillation,
L = L_MIM + feat_weight·L_feat, AdamW with the config's global-norm clipping. Masks: the twin
draws its own each step, the same ceil(mask_ratio·units) units per image as geossl (which draws
them inside its step).

Sizes (configure): the 13-band ``:ms`` config with Swin-T instead of Swin-B for both networks, the
student at --img (224: window 7, 30 of 49 units of 32 px masked) instead of 192, the teacher at the
same size and window (config: 224, window 7) and random weights (``random:seed=1``: no file needed).
"""

from __future__ import annotations

from geossl.masking import ceil_count
from twins import common

ARCHS = {"swin_tiny_patch4_window7_224": "configs/gfm_swin_b.py:ms"}
NOTE = ("gfm sizes: Swin-T student (13 bands, --img) and Swin-T teacher (RGB, random weights, "
        "same size), not GFM's Swin-B at 192 / 224")


def configure(config, arch, args) -> None:
    """Student and teacher: ``arch`` at --img with the largest window <= 7 that tiles every stage;
    the teacher from ``random:seed=1``."""
    window = common.swin_window(args.img)
    with config.unlocked():
        config.model.name, config.model.window_size = arch, window
        config.teacher.model.update(dict(name=arch, img_size=args.img, window_size=window))
        config.teacher.torch_checkpoint = "random:seed=1"


def swin_features(torch, net, x, mask=None, mask_token=None, full=True):
    """timm Swin ``net`` on x (B,C,H,W) stage by stage, mask (B,H/4,W/4) bool patches replaced by
    ``mask_token`` (1,1,1,D): (final-normed map (B,h,w,D) or None, last patch-merging output)."""
    x = net.patch_embed(x)                                  # (B, H/4, W/4, D): timm's NHWC
    if mask is not None:
        x = torch.where(mask[..., None], mask_token.to(x.dtype), x)
    merged = None
    for i, stage in enumerate(net.layers):
        x = stage.downsample(x)
        if i == len(net.layers) - 1:
            merged = x
            if not full:
                return None, merged
        x = stage.blocks(x)
    return net.norm(x), merged


def draw_masks(torch, batch, img, unit, patch, ratio):
    """(patch mask (B,img/patch,img/patch), pixel mask (B,img,img)) bool: ceil(ratio·units) random
    units of ``unit`` px per image."""
    g = img // unit
    order = torch.rand(batch, g * g).argsort(dim=1)[:, :ceil_count(ratio, g * g)]
    units = torch.zeros(batch, g * g, dtype=torch.bool).scatter_(1, order, True).view(batch, g, g)
    up = unit // patch
    return (units.repeat_interleave(up, 1).repeat_interleave(up, 2),
            units.repeat_interleave(unit, 1).repeat_interleave(unit, 2))


def torch_side(torch, args, config, host_batch) -> dict:
    nn, F = torch.nn, torch.nn.functional
    o, t = config.objective, config.teacher
    net, dim, lib = common.backbone(torch, args.arch, args.img, args.bands)
    patch = net.patch_embed.patch_size[0]
    stride = patch * 2 ** (len(net.layers) - 1)
    teacher, t_dim, _ = common.backbone(torch, t.model.name, int(t.model.img_size),
                                        int(t.model.in_chans))
    teacher.eval().requires_grad_(False)
    student = nn.ModuleDict(dict(backbone=net, decoder=nn.Linear(dim, stride ** 2 * args.bands),
                                 projector=nn.Linear(dim, t_dim)))
    embed_dim = net.patch_embed.proj.out_channels
    student.register_parameter("mask_token", nn.Parameter(torch.zeros(1, 1, 1, embed_dim)))
    nn.init.trunc_normal_(student.mask_token, std=0.02)
    student.train()
    opt = common.adamw(torch, (student,), config)
    x = common.images(torch, host_batch, "image")
    bands = list(config.data.bands)
    t_bands = [bands.index(b) for b in t.bands]
    scale, offset = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1)
                     for v in (t.input_scale, t.input_offset))
    out = {}

    def step():
        patch_mask, pixel_mask = draw_masks(torch, x.shape[0], args.img, int(o.mask_unit), patch,
                                            float(o.mask_ratio))
        fmap, merged = swin_features(torch, net, x, patch_mask, student.mask_token)
        pred = F.pixel_shuffle(student.decoder(fmap).permute(0, 3, 1, 2), stride)   # (B,C,H,W)
        m = pixel_mask.float()
        loss_mim = ((pred - x).abs().sum(1) * m).sum() / (m.sum() + 1e-5) / args.bands
        z = student.projector(merged.mean(dim=(1, 2)))
        with torch.no_grad():
            t_x = F.interpolate(x[:, t_bands], size=int(t.model.img_size), mode="bilinear",
                                align_corners=True) * scale + offset
            f_t = swin_features(torch, teacher, t_x, full=False)[1].mean(dim=(1, 2))
        loss_feat = -(F.normalize(z, dim=1) * F.normalize(f_t, dim=1)).sum(1).mean()
        loss = loss_mim + float(o.feat_weight) * loss_feat
        out["loss"] = common.descend(torch, opt, loss, config)

    return dict(lib=lib, step=step, loss=lambda: float(out["loss"]))
