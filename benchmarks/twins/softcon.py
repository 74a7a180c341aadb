"""SoftCon's step in PyTorch: timm ViT / Swin or torchvision ResNet-50 (stem for C bands, no fc),
MoCo-v3 projector and predictor (BatchNorm1d, sizes from config.objective), EMA teacher (backbone +
projector, no grad, updated after the optimiser step), the symmetrised soft contrastive loss
(geossl.losses, REFERENCE §1), AdamW (geossl keeps its config's optimiser: LARS for ResNet-50).
Same math as geossl at mask ratio 0 (geossl's Siamese masking is its own row)."""

from __future__ import annotations

import copy

from twins import common

SAVING = {"objective.mask_ratio": 0.0}   # the same-math row; the config's ratio is its own row
ARCHS = {"vit_small_patch14": "configs/softcon_vit_s.py", "resnet50": "configs/softcon_rn50.py",
         "swin_tiny_patch4_window7_224": "configs/softcon_vit_s.py"}


def configure(config, arch, args) -> None:
    """Swin-T: the ViT-S config (AdamW) with the backbone swapped, window 7 (or the largest window
    <= 7 that tiles every stage at --img)."""
    if arch.startswith("swin"):
        with config.unlocked():
            config.model.name, config.model.window_size = arch, common.swin_window(args.img)


def soft_contrastive(torch, q, k, yq, yk, tau, lam):
    """geossl.losses.soft_contrastive_loss, soft_loss="ce", one direction."""
    F = torch.nn.functional
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / tau
    log_p = F.log_softmax(logits, dim=1)
    instance = -log_p.diagonal().mean()
    sim = F.normalize(yq, dim=1) @ F.normalize(yk, dim=1).T  # empty label rows stay 0
    row_sum = sim.sum(1)
    rows = row_sum > 0
    target = sim / torch.where(rows, row_sum, torch.ones_like(row_sum))[:, None]
    per_row = torch.where(rows, -(target * log_p).sum(1), torch.zeros_like(row_sum))
    return instance + lam * per_row.sum() / rows.sum().clamp(min=1)


def torch_side(torch, args, config, host_batch) -> dict:
    o = config.objective
    net, dim, lib = common.backbone(torch, args.arch, args.img, args.bands)
    encoder = torch.nn.Sequential(net, common.mlp(torch, dim, o.proj_hidden, o.proj_dim,
                                                  o.proj_layers, last_bn=True))
    predictor = common.mlp(torch, o.proj_dim, o.pred_hidden, o.proj_dim, o.pred_layers, last_bn=False)
    teacher = copy.deepcopy(encoder).requires_grad_(False)
    for m in (encoder, predictor, teacher):
        m.train()
    opt = common.adamw(torch, (encoder, predictor), config)
    x1, x2 = (common.images(torch, host_batch, k) for k in ("view1", "view2"))
    y1, y2 = (torch.from_numpy(host_batch[k]).float() for k in ("labels1", "labels2"))
    tau, lam, momentum = float(o.temperature), float(o.soft_weight), float(config.ema.base)
    out = {}

    def step():
        q1, q2 = predictor(encoder(x1)), predictor(encoder(x2))
        with torch.no_grad():
            k1, k2 = teacher(x1), teacher(x2)
        loss = 0.5 * (soft_contrastive(torch, q1, k2, y1, y2, tau, lam)
                      + soft_contrastive(torch, q2, k1, y2, y1, tau, lam))
        out["loss"] = common.descend(torch, opt, loss, config)
        common.ema_update(torch, teacher, encoder, momentum)

    return dict(lib=lib, step=step, loss=lambda: float(out["loss"]))
