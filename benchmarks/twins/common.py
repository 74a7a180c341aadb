"""Pieces several twins share: timm / torchvision backbones, MoCo-v3 MLPs, AdamW with geossl's
decay mask, NCHW tensors of a host batch."""

from __future__ import annotations

NO_DECAY = ("pos_embed", "cls_token", "mask_token", "register_tokens",  # geossl's decay mask
            "relative_position_bias_table")


def swin_window(img: int) -> int:
    """Largest window <= 7 that tiles all 4 stages of a patch-4 Swin at ``img`` px (7 at 224)."""
    return next(w for w in range(7, 0, -1)
                if all((img // 4 >> i) % min(w, img // 4 >> i) == 0 for i in range(4)))


def mlp(torch, in_dim, hidden, out, layers, last_bn):
    """MoCo-v3 MLP: Linear(no bias) → BN → ReLU per hidden layer, last Linear (+ BN without affine)."""
    nn, mods = torch.nn, []
    for i in range(layers):
        last = i == layers - 1
        mods.append(nn.Linear(in_dim if i == 0 else hidden, out if last else hidden, bias=False))
        if not last:
            mods += [nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        elif last_bn:
            mods.append(nn.BatchNorm1d(out, affine=False))
    return nn.Sequential(*mods)


def backbone(torch, arch, img, bands, **kwargs):
    """(module, feature dim, library) of ``arch`` for ``bands``-channel ``img`` px input, no
    classifier: timm ViT-S/14 DINOv2 (``vit_small_patch14``) or any timm ViT / Swin name, or
    torchvision ResNet-50 with a ``bands``-channel stem. ``kwargs`` go to timm."""
    if arch == "resnet50":
        import torchvision
        net = torchvision.models.resnet50()
        net.conv1 = torch.nn.Conv2d(bands, 64, kernel_size=7, stride=2, padding=3, bias=False)
        dim, net.fc = net.fc.in_features, torch.nn.Identity()
        return net, dim, "torchvision"
    import timm
    name = "vit_small_patch14_dinov2" if arch == "vit_small_patch14" else arch
    if arch.startswith("swin"):
        kwargs = dict(dict(window_size=swin_window(img), drop_path_rate=0.0), **kwargs)
    net = timm.create_model(name, pretrained=False, img_size=img, in_chans=bands, num_classes=0,
                            **kwargs)
    return net, net.num_features, "timm"


def adamw(torch, modules, config):
    """AdamW over ``modules``' trainable parameters with the config's lr, betas, eps and weight
    decay; under config.optim.decay "matrices" (the default) no decay on biases, norms and the
    tokens geossl's decay mask leaves out, under "all" (DINO / PerA) decay on every parameter."""
    c = config.optim
    decay_all = c.get("decay", "matrices") == "all"
    flags = [(p, decay_all or (p.ndim > 1 and not n.endswith(NO_DECAY)))
             for m in modules for n, p in m.named_parameters() if p.requires_grad]
    decay, rest = ([p for p, f in flags if f == d] for d in (True, False))
    wd = c.weight_decay["base"] if hasattr(c.weight_decay, "keys") else c.weight_decay
    lr = config.lr.base if hasattr(config.lr, "base") else config.lr
    groups = [{"params": decay, "weight_decay": float(wd)}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=float(lr),
                             betas=(c.get("b1", 0.9), c.get("b2", 0.999)), eps=c.get("eps", 1e-8))


def images(torch, host_batch, key):
    """(B, C, H, W) float32 tensor of the host batch's (B, H, W, C) ``key``."""
    return torch.from_numpy(host_batch[key]).permute(0, 3, 1, 2).contiguous().float()


def descend(torch, opt, loss, config):
    """One optimiser step on ``loss``, its gradient clipped to global norm config.optim.clip_norm
    over the optimiser's parameters when that is set (as geossl's optimiser does); returns the
    loss detached."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    clip = float(config.optim.get("clip_norm", 0.0) or 0.0)
    if clip > 0:
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
    opt.step()
    return loss.detach()


def ema_update(torch, teacher, student, momentum):
    """teacher ← momentum · teacher + (1 − momentum) · student, parameter by parameter."""
    with torch.no_grad():
        for t, s in zip(teacher.parameters(), student.parameters()):
            t.lerp_(s, 1.0 - momentum)


# ----- ViT token paths (geossl's keep_idx / insert_idx options on a timm ViT) -------------------
#: timm ViT/16 names → geossl's config.model fields for the same network (no LayerScale).
VIT16 = {"vit_tiny_patch16_224": dict(name="vit_tiny_patch16"),
         "vit_small_patch16_224": dict(name="vit_tiny_patch16", embed_dim=384, num_heads=6),
         "vit_base_patch16_224": dict(name="vit_base_patch16")}


def random_split(torch, n, num_tokens, counts):
    """Sorted disjoint index sets (n, c) int64 for each c in ``counts``, from one random
    permutation per row (geossl.masking.random_split, drawn with torch's generator)."""
    perm = torch.rand(n, num_tokens).argsort(dim=1)
    bounds = [0]
    for c in counts:
        bounds.append(bounds[-1] + c)
    return [perm[:, a:b].sort(dim=1).values for a, b in zip(bounds, bounds[1:])]


def patch_pos(torch, net, grid, rule="timm"):
    """timm ViT ``net``'s patch position table (gh·gw, D) for a ``grid`` patch grid: resized from
    its own grid as geossl's ViT resizes it (``config.model.pos_embed_resize``): "timm" antialiased
    bicubic to the size, "dinov2" bicubic by scale_factor (g + 0.1) / g0 without antialiasing."""
    g0, pos = tuple(net.patch_embed.grid_size), net.pos_embed[:, net.num_prefix_tokens:]
    if tuple(grid) == g0:
        return pos[0]
    table = pos.reshape(1, *g0, -1).permute(0, 3, 1, 2)
    F = torch.nn.functional
    if rule == "dinov2":
        scale = tuple((g + 0.1) / s for g, s in zip(grid, g0))
        table = F.interpolate(table, scale_factor=scale, mode="bicubic", align_corners=False)
    else:
        table = F.interpolate(table, size=tuple(grid), mode="bicubic", align_corners=False,
                              antialias=True)
    return table.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)


def patchify(x, p):
    """(n,C,H,W) → (n, (H/p)(W/p), p·p·C), each patch in (p, p, C) order (geossl.patches)."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def vit_tokens(torch, net, x, keep_idx=None, insert=None, rule="timm"):
    """timm ViT ``net`` (class token, no registers) run as geossl's ViT with its token options:
    x (B,C,H,W) → final-normed tokens (B, 1+K[+L], D). Patch embeddings + positions (``patch_pos``),
    only keep_idx (B,K) gathered, [cls + pos] first; insert = (idx (B,L), block k, token (1,D))
    appends token + position[idx] before block k (PerA's learn positions)."""
    p = net.patch_embed.patch_size[0]
    grid = (x.shape[2] // p, x.shape[3] // p)
    pos = patch_pos(torch, net, grid, rule)
    tokens = net.patch_embed.proj(x).flatten(2).transpose(1, 2) + pos
    if keep_idx is not None:
        tokens = tokens.gather(1, keep_idx[..., None].expand(-1, -1, tokens.shape[-1]))
    cls = (net.cls_token + net.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    h = torch.cat([cls, tokens], dim=1)
    for i, block in enumerate(net.blocks):
        if insert is not None and i == insert[1]:
            h = torch.cat([h, insert[2] + pos[insert[0]]], dim=1)
        h = block(h)
    return net.norm(h)
