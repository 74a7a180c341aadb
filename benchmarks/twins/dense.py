"""Dense contrastive step in PyTorch: torchvision ResNet-50 (stem for C bands; per-location features
= the map of stage config.objective.feature_stage) or timm ViT-S/14 DINOv2 (final-normed patch
tokens), the per-location MoCo-v3 MLP head (Linear → BatchNorm over all locations → ReLU, last
Linear; sizes from config.objective), an EMA key encoder (backbone + head in train mode, no grad,
updated after the optimiser step with config.ema.base), per image and direction K =
num_locations distinct random cells (drawn each step, as geossl does inside its step), their
positives bilinearly sampled where the other view sees the same ground (from the batch's crop
geometry), the dense InfoNCE over the global batch's (B·K)² logits, symmetrised, and AdamW
(geossl keeps its config's optimiser: LARS for ResNet-50).

Sizes: the configs' (224 px, batch from --batch); ``configure`` lowers num_locations to the cell
count of a small --img's grid (ResNet-50: (img/32)², ViT-S/14: (img/14)²) and changes nothing at
224 px (49 and 256 cells, K = 32).
"""

from __future__ import annotations

import copy

from twins import common

ARCHS = {"resnet50": "configs/dense_rn50.py", "vit_small_patch14": "configs/dense_vit_s.py"}
NOTE = ("dense sizes: the configs' (K = 32 cells per image and direction at 224 px); the PyTorch "
        "side uses AdamW where geossl's ResNet-50 config uses LARS")


def feature_grid(config, arch, img) -> tuple[int, int]:
    """(h, w) of the per-location feature map at ``img`` px."""
    if arch.startswith("vit"):
        return img // 14, img // 14
    side = img // 2 ** (int(config.objective.feature_stage) + 1)
    return side, side


def configure(config, arch, args) -> None:
    """K = min(num_locations, cells of the feature grid at --img), so tiny images run."""
    h, w = feature_grid(config, arch, args.img)
    config.objective.num_locations = min(int(config.objective.num_locations), h * w)


def feature_map(torch, net, x, arch, stage):
    """(B, h, w, F) per-location features of x (B, C, H, W)."""
    if arch.startswith("vit"):
        tokens = net.forward_features(x)[:, net.num_prefix_tokens:]
        g = x.shape[2] // 14
        return tokens.reshape(x.shape[0], g, x.shape[3] // 14, -1)
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    for i in range(1, stage + 1):
        x = getattr(net, f"layer{i}")(x)
    return x.permute(0, 2, 3, 1)


def correspondences(torch, idx, geo_a, geo_b, grid, size, origin, pitch):
    """geossl.objectives.dense.correspondences: cells idx (B,K) of view a, centred at origin +
    pitch·(row, column) → (cell coordinates (B,K,2) in view b's grid, centres at integers; valid
    (B,K) bool)."""
    h, w = grid
    extent = torch.tensor(size, dtype=torch.float32)
    centres = origin + pitch * torch.stack([idx // w, idx % w], -1).float()
    flip_a, flip_b = geo_a[:, None, 4:6] > 0.5, geo_b[:, None, 4:6] > 0.5
    ground = geo_a[:, None, 0:2] + torch.where(flip_a, extent - centres, centres) \
        * geo_a[:, None, 2:4] / extent
    unflipped = (ground - geo_b[:, None, 0:2]) * extent / geo_b[:, None, 2:4]
    valid = ((unflipped >= 0) & (unflipped <= extent)).all(-1)
    uv = torch.where(flip_b, extent - unflipped, unflipped)
    return (uv - origin) / pitch, valid


def bilinear_sample(torch, fmap, coords):
    """fmap (B,h,w,D) at cell coordinates (B,K,2), clamped to the outer centres → (B,K,D)."""
    b, h, w, d = fmap.shape
    flat = fmap.reshape(b, h * w, d)
    r, c = coords[..., 0].clamp(0, h - 1), coords[..., 1].clamp(0, w - 1)
    r0, c0 = r.floor().long(), c.floor().long()
    r1, c1 = (r0 + 1).clamp(max=h - 1), (c0 + 1).clamp(max=w - 1)
    fr, fc = (r - r0)[..., None], (c - c0)[..., None]

    def at(ri, ci):
        return torch.gather(flat, 1, (ri * w + ci)[..., None].expand(-1, -1, d))

    top = at(r0, c0) * (1 - fc) + at(r0, c1) * fc
    return top * (1 - fr) + (at(r1, c0) * (1 - fc) + at(r1, c1) * fc) * fr


def dense_info_nce(torch, q, k, valid, tau):
    """geossl.losses.dense_info_nce_loss: q, k (B,K,P), valid (B,K) → scalar."""
    F = torch.nn.functional
    q, k = F.normalize(q.flatten(0, 1), dim=1), F.normalize(k.flatten(0, 1), dim=1)
    ok = valid.flatten()
    logits = (q @ k.T / tau).masked_fill(~ok[None, :], -1e9)
    per_anchor = torch.logsumexp(logits, dim=1) - logits.diagonal()
    return torch.where(ok, per_anchor, torch.zeros_like(per_anchor)).sum() / ok.sum().clamp(min=1)


def torch_side(torch, args, config, host_batch) -> dict:
    o = config.objective
    if float(o.image_weight) > 0 or not o.head_bn or o.teacher_mode != "ema":
        raise SystemExit("dense twin: expected image_weight 0, head_bn True and teacher_mode "
                         f"'ema' (the configs'), found {o.image_weight}, {o.head_bn}, "
                         f"{o.teacher_mode!r}")
    net, dim, lib = common.backbone(torch, args.arch, args.img, args.bands)
    if not args.arch.startswith("vit"):
        dim = getattr(net, f"layer{o.feature_stage}")[-1].conv3.out_channels
    head = common.mlp(torch, dim, o.proj_hidden, o.proj_dim, o.proj_layers, last_bn=False)
    student = torch.nn.ModuleDict(dict(net=net, head=head))
    teacher = copy.deepcopy(student).requires_grad_(False)
    student.train()
    teacher.train()
    opt = common.adamw(torch, (student,), config)
    views = [common.images(torch, host_batch, f"view{i}") for i in (1, 2)]
    geos = [torch.from_numpy(host_batch[f"geometry{i}"]).float() for i in (1, 2)]
    stage, size = int(o.get("feature_stage", 4)), (args.img, args.img)
    if args.arch.startswith("vit"):   # cell centres as geossl.objectives.dense.feature_grid's
        p = float(net.patch_embed.patch_size[0])
        grid_at = (p / 2, p)
    else:                             # torchvision's paddings centre cell j on pixel pitch·j
        grid_at = (0.5, float(4 * 2 ** (stage - 1)))
    k_cells, tau, momentum = int(o.num_locations), float(o.temperature), float(config.ema.base)
    out = {}

    def project(model, x):
        fmap = feature_map(torch, model["net"], x, args.arch, stage)
        b, h, w, f = fmap.shape
        return model["head"](fmap.reshape(-1, f)).reshape(b, h, w, -1)

    def direction(query, key, geo_q, geo_k):
        b, h, w, p = query.shape
        idx = torch.rand(b, h * w).argsort(dim=1)[:, :k_cells]
        coords, valid = correspondences(torch, idx, geo_q, geo_k, (h, w), size, *grid_at)
        q = torch.gather(query.reshape(b, h * w, p), 1, idx[..., None].expand(-1, -1, p))
        return dense_info_nce(torch, q, bilinear_sample(torch, key, coords), valid, tau)

    def step():
        s1, s2 = (project(student, x) for x in views)
        with torch.no_grad():
            t1, t2 = (project(teacher, x) for x in views)
        loss = 0.5 * (direction(s1, t2, geos[0], geos[1]) + direction(s2, t1, geos[1], geos[0]))
        out["loss"] = common.descend(torch, opt, loss, config)
        common.ema_update(torch, teacher, student, momentum)

    return dict(lib=lib, step=step, loss=lambda: float(out["loss"]))
