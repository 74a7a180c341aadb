"""SoftCon configs shared by softcon_vit_s.py, softcon_vit_b.py and softcon_rn50.py.

Paper-scale defaults: SSL4EO-S12 (250k locations, 4 seasons), 224 px, 100 epochs, 10 warmup,
EMA momentum 0.99 → 1 (cosine). Choices the paper leaves open are fields with REFERENCE §1's
defaults: temperature 0.2, soft_weight 1.0, soft_loss "ce", mask_ratio 0.5.

Views: the paper's figure draws the two views from two seasons; the augmentation recipe and
whether the seasons may coincide are not confirmed from the paper. geossl follows the SSL4EO-S12
MoCo-v3 code of the same lab (zhu-xlab/SSL4EO-S12,
src/benchmark/pretrain_ssl/pretrain_moco_v3_s2c.py), each choice a field of ``c.data`` filled
from the defaults of ``objectives.softcon_views.ViewConfig``: crop scale 0.08–1,
brightness/contrast 0.4 p 0.8, grayscale p 0.2, blur p 1.0 / 0.1, horizontal flip; the two
seasons drawn independently (``distinct_seasons`` False: the same season twice with probability
1/4); RandomChannelDrop off (``channel_drop_p`` 0: commented out in that script since its second
commit; its arguments, 1–6 bands with p 0.5, are the other fields; where it ran, in the first
commit, it zeroed pixel rows instead of bands). Not faithful: brightness and contrast are clipped
to [0, 1] (``jitter_clip`` True); that script's float path leaves them unclipped (e.g. −0.21 to
1.61 at factors 1.4 / 1.3) and its default uint8 path wraps values past 255 to small ones.

Optimisation (``common.ssl4eo_recipe``): the ViTs' peak lr is MoCo v3's linear rule, 1.5e-4 × 4096 /
256, with AdamW decaying every parameter the forward uses (MoCo v3's and SSL4EO-S12's
``AdamW(model.parameters())``; the sparse forward leaves DINOv2's mask token unused); the ResNet's
0.6 at batch 4096 is SSL4EO-S12's LARS value as given (its script leaves the batch scaling commented
out). The lr is set when the config is built: ``--config.global_batch`` alone does not rescale it.
Not from that code: the patch embedding is trained (SSL4EO-S12's from-scratch ViT script freezes its
random patch projection, ``--stop-grad-conv1``; SoftCon re-initialises it for the new bands and
continues from DINOv2); the instance term is the mean of the two directions, where MoCo v3 scales
their sum by 2τ (its loss is 4τ = 0.8 × geossl's at τ 0.2: the same direction, gradients 1.25×
smaller).
"""

from __future__ import annotations

import ml_collections

from configs import common
from geossl.objectives import softcon_views

VARIANTS = ("demo", "sar")


def softcon(model: str, arg: str | None, *, optim: str, lr: float) -> ml_collections.ConfigDict:
    variants = common.parse_arg(arg, VARIANTS)
    c = common.base()
    vit = model.startswith("vit")
    c.model = common.s2_backbone(model)
    c.objective = ml_collections.ConfigDict(dict(
        name="softcon",
        temperature=0.2,       # tau of P_ij = z_i . z'_j / tau
        soft_weight=1.0,       # lambda of the label-similarity term
        soft_loss="ce",        # "ce" (row-normalised soft target) or "mse"
        mask_ratio=0.5,        # Siamese masking: fraction of student patches dropped
        mask_patch_size=32,    # ResNet: masked square size in pixels (ViT: its patch size)
        mask_fill=0.0,         # ResNet: value of masked pixels (normalised input; not in the paper)
        proj_hidden=4096, proj_dim=256, proj_layers=3 if vit else 2,
        pred_hidden=4096, pred_layers=2,
    ))
    c.ema = ml_collections.ConfigDict(dict(name="cosine", base=0.99, final=1.0))
    c.data.update(softcon_views.config_fields())   # every view field, at its default
    c.global_batch = 4096
    # SSL4EO-S12 MoCo-v3 recipes (REFERENCE §1): LARS for ResNets; AdamW betas (0.9, 0.999) for
    # ViTs, not confirmed for SoftCon
    common.ssl4eo_recipe(c, optim_name=optim, lr=lr)
    c.checkpoint_every = 1000
    c.log_every = 50
    # Continual pretraining from DINOv2 (ViT) / DINO (ResNet-50) weights: set the path.
    c.init.torch_checkpoint = ""
    if "sar" in variants:
        c.model.in_chans = 2
        c.data.bands = common.S1_BANDS
        c.data.channel_drop_max = 1  # two SAR bands: drop at most one
    if "demo" in variants:
        demo(c, vit)
    return c


def demo(c, vit: bool) -> None:
    """A few hundred steps on the CPU in minutes, on the synthetic demo data (32 px scenes)."""
    c.model.img_size = 32
    if vit:
        c.model.update(dict(name="vit_tiny_patch16", patch_size=8, depth=4, drop_path_rate=0.0))
        c.objective.mask_patch_size = 8
    else:
        c.model.name = "resnet18"
        c.objective.mask_patch_size = 8
    c.objective.update(dict(proj_hidden=512, proj_dim=128, pred_hidden=512))
    c.data.crop_scale = (0.5, 1.0)
    common.demo_run(c, batch=64, steps=600, lr=1e-3, warmup_steps=50, probe_every=100)
