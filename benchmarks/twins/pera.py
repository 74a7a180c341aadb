"""PerA's step in PyTorch: a timm ViT/16 (no LayerScale, student drop path config.model's rate in
every block, as DINOv2's blocks apply it above 0.1 with ``drop_path_subset``: each branch on a
random int(0.7·B) of the crops) run through geossl's token options (``common.vit_tokens``), the
class and pixel DINO heads (MLP → L2 → weight-normalised prototypes with trained g, sizes from
config.objective), an EMA teacher (backbone + class head, no drop path, no grad, updated after the
optimiser step), PerA's disjoint masks drawn per step with geossl's counts (student round(0.2·N),
learn round(0.4·N) − that, teacher the rest; local crops: student and teacher only), the student's
own mask token with the position table at the learn positions from block insert_at_block on, local
crops' position table resized by config.model.pos_embed_resize ("dinov2": bicubic by scale factor
(g + 0.1) / g0, no antialias, as geossl does; timm's dynamic_img_size path would resample with
antialiasing), and loss = w·DINO (same-index pairs, centred teacher) + w·KoLeo (per global crop) +
w·pixel MSE at the learn positions; AdamW decaying every parameter (decay "all"), eps and clipping
of the config.

Sizes (both sides, ``configure``): the 13-band ``:ms`` config with ViT-S/16 instead of ViT-B/16
(``vit_base_patch16_224``: the config's own; ``vit_tiny_patch16_224``: the tests' tiny twin),
global crops at --img (224: 196 patches, student 39, learn 39, teacher 118), the config's 2 global
+ 8 local pairs of 96 px (36 patches: student 7, teacher 22) and 131072 prototypes.
"""

from __future__ import annotations

import copy
import types

from geossl.masking import count_for
from twins import common

ARCHS = {"vit_small_patch16_224": "configs/pera_vit_b.py:ms",
         "vit_base_patch16_224": "configs/pera_vit_b.py:ms",
         "vit_tiny_patch16_224": "configs/pera_vit_b.py:ms"}
NOTE = ("pera: ViT-S/16 (default) or the config's ViT-B/16, 2 global crops at --img + 8 local "
        "pairs at 96 px per sample, 131072 prototypes; local position tables resized by "
        "DINOv2's rule")


def configure(config, arch, args) -> None:
    """The ViT/16 of ``arch`` (no LayerScale, geossl's names in ``common.VIT16``)."""
    with config.unlocked():
        config.model.update(common.VIT16[arch])


def subset_forward(torch, rate):
    """A timm Block's forward with DINOv2's stochastic depth above 0.1 while training
    (``drop_add_residual_stochastic_depth``): each branch on int(B·(1−rate)) random samples,
    index-added to them scaled by B / that count."""
    def add(x, branch):
        b = x.shape[0]
        count = max(int(b * (1 - rate)), 1)
        rows = torch.randperm(b, device=x.device)[:count]
        residual = branch(x[rows])
        return torch.index_add(x.flatten(1), 0, rows, residual.flatten(1).to(x.dtype),
                               alpha=b / count).view_as(x)

    def forward(self, x):
        if not self.training:
            x = x + self.ls1(self.attn(self.norm1(x)))
            return x + self.ls2(self.mlp(self.norm2(x)))
        x = add(x, lambda z: self.ls1(self.attn(self.norm1(z))))
        return add(x, lambda z: self.ls2(self.mlp(self.norm2(z))))
    return forward


def dino_head(torch, in_dim, out_dim, o):
    """DINOHead: Linear+GELU layers to o.head_bottleneck → (L2 in ``head``) → weight-normalised
    Linear without bias onto out_dim, g trained (norm_last_layer=False)."""
    nn = torch.nn
    dims = [in_dim] + [int(o.head_hidden)] * (int(o.head_layers) - 1) + [int(o.head_bottleneck)]
    layers = []
    for i in range(len(dims) - 1):
        layers += [nn.Linear(dims[i], dims[i + 1])] + ([nn.GELU()] if i < len(dims) - 2 else [])
    last = nn.utils.parametrizations.weight_norm(nn.Linear(dims[-1], out_dim, bias=False))
    return nn.ModuleDict(dict(mlp=nn.Sequential(*layers), last_layer=last))


def head(torch, module, x):
    return module["last_layer"](torch.nn.functional.normalize(module["mlp"](x), dim=-1))


def koleo(torch, x, eps=1e-8):
    """geossl.losses.koleo_loss: x (B,D) → −mean log(distance to the nearest other row + eps)."""
    xn = torch.nn.functional.normalize(x, dim=-1)
    with torch.no_grad():
        sim = xn @ xn.T
        nearest = sim.fill_diagonal_(-float("inf")).argmax(dim=1)
    dist = ((xn - xn[nearest]) ** 2).sum(-1).clamp(min=1e-30).sqrt()
    return -(dist + eps).log().mean()


def crops(torch, host_batch, key):
    """(B·n, C, S, S) float32 of the host batch's (B, n, S, S, C) crops, crop index minor."""
    return torch.from_numpy(host_batch[key]).flatten(0, 1).permute(0, 3, 1, 2).contiguous().float()


def counts(o, n):
    """(student, learn, teacher) position counts of geossl.masking.pera_split for n patches."""
    s, sl = count_for(float(o.student_ratio), n), count_for(float(o.learn_ratio), n)
    return s, sl - s, n - sl


def torch_side(torch, args, config, host_batch) -> dict:
    o, m = config.objective, config.model
    net, dim, lib = common.backbone(torch, args.arch, args.img, args.bands,
                                    drop_path_rate=float(m.drop_path_rate))
    if m.get("drop_path_uniform", False):
        from timm.layers import DropPath
        for block in net.blocks:
            rate = float(m.drop_path_rate)
            block.drop_path1, block.drop_path2 = DropPath(rate), DropPath(rate)
    if m.get("drop_path_subset", False) and float(m.drop_path_rate) > 0.1:
        for block in net.blocks:   # bound methods: the teacher's deep copy binds its own blocks
            block.forward = types.MethodType(subset_forward(torch, float(m.drop_path_rate)), block)
    p = net.patch_embed.patch_size[0]
    student = torch.nn.ModuleDict(dict(backbone=net, class_head=dino_head(
        torch, dim, int(o.num_prototypes), o)))
    pixel_head = dino_head(torch, dim, p * p * args.bands, o)
    mask_token = torch.nn.Parameter(0.02 * torch.randn(1, dim))
    teacher = copy.deepcopy(student).requires_grad_(False).eval()
    student.train()
    opt = common.adamw(torch, (student, pixel_head, torch.nn.ParameterList([mask_token])), config)
    xs_g, xt_g, xs_l, xt_l = (crops(torch, host_batch, k) for k in (
        "global_student", "global_teacher", "local_student", "local_teacher"))
    b, g = host_batch["global_student"].shape[:2]
    n_g, n_l = (xs_g.shape[2] // p) ** 2, (xs_l.shape[2] // p) ** 2
    rule, insert_at = m.get("pos_embed_resize", "timm"), int(o.insert_at_block)
    tau_s, tau_t, mom = float(o.student_temp), float(o.teacher_temp), float(o.center_momentum)
    F = torch.nn.functional
    out = {"center": torch.zeros(1, int(o.num_prototypes))}

    def step():
        s_idx, l_idx, t_idx = common.random_split(torch, xs_g.shape[0], n_g, counts(o, n_g))
        ls_idx, _, lt_idx = common.random_split(torch, xs_l.shape[0], n_l, counts(o, n_l))
        tokens = common.vit_tokens(torch, net, xs_g, s_idx, (l_idx, insert_at, mask_token), rule)
        pred = head(torch, pixel_head, tokens[:, 1 + s_idx.shape[1]:])
        local = common.vit_tokens(torch, net, xs_l, ls_idx, rule=rule)
        s_cls = torch.cat([tokens[:, 0], local[:, 0]])
        s_all = head(torch, student["class_head"], s_cls)   # one head call: global rows, then local
        with torch.no_grad():
            t_cls = torch.cat([common.vit_tokens(torch, teacher["backbone"], x, i, rule=rule)[:, 0]
                               for x, i in ((xt_g, t_idx), (xt_l, lt_idx))])
            t_all = head(torch, teacher["class_head"], t_cls)
            target = F.softmax((t_all - out["center"]) / tau_t, dim=-1)
        loss_dino = -(target * F.log_softmax(s_all / tau_s, dim=-1)).sum(-1).mean()
        out["center"] = mom * out["center"] + (1 - mom) * t_all.mean(0, keepdim=True)
        per_crop = s_all[:b * g].reshape(b, g, -1)
        loss_koleo = sum(koleo(torch, per_crop[:, i]) for i in range(g))
        pixels = common.patchify(xs_g, p).gather(1, l_idx[..., None].expand(-1, -1, pred.shape[-1]))
        loss_mse = ((pred - pixels) ** 2).sum(-1).mean()
        loss = (float(o.dino_weight) * loss_dino + float(o.koleo_weight) * loss_koleo
                + float(o.mse_weight) * loss_mse)
        out["loss"] = common.descend(torch, opt, loss, config)
        common.ema_update(torch, teacher, student, float(config.ema.base))

    return dict(lib=lib, step=step, loss=lambda: float(out["loss"]))
