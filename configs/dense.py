"""Dense contrastive (Embedding Earth, REFERENCE §5) configs shared by dense_rn50.py and
dense_vit_s.py.

The paper's code and training details were never released: every choice below is geossl's, a
field to change. Objective (``geossl.objectives.dense``): per-location InfoNCE, τ 0.2, K = 32
sampled cells per image and direction (logits (B·K)² = 16384² at batch 512), no image-level term
(``image_weight`` 0), EMA key encoder (momentum cosine 0.99 → 1), a 2-layer per-location MLP head
(2048 → 128, BatchNorm). Views (``c.data``, filled from the defaults of
``geossl.objectives.dense_views.DenseViewConfig``): one acquisition for both views, crops of
scale 0.2–1 sharing at least a quarter of the smaller crop, horizontal and vertical flips,
SSL4EO-style brightness/contrast 0.4 p 0.8, grayscale p 0.2, blur p 1.0 / 0.1. 13-band S2 L1C
at 224 px, 100 epochs of SSL4EO-S12's 250k locations, 10 of warmup.

``:demo`` trains on the 32 px synthetic scenes in minutes on the CPU.
"""

from __future__ import annotations

import ml_collections

from configs import common
from geossl.objectives import dense_views

VARIANTS = ("demo",)


def dense(model: str, arg: str | None, *, optim: str, lr: float) -> ml_collections.ConfigDict:
    variants = common.parse_arg(arg, VARIANTS)
    c = common.base()
    vit = model.startswith("vit")
    c.model = common.s2_backbone(model)
    c.objective = ml_collections.ConfigDict(dict(
        name="dense",
        temperature=0.2,       # tau of the per-location (and image-level) InfoNCE logits
        num_locations=32,      # K cells sampled per image and direction: logits (B*K)^2
        image_weight=0.0,      # weight of the image-level InfoNCE on pooled embeddings (0 = off)
        teacher_mode="ema",    # key encoder: "ema" of the query encoder, or "none" (shared weights)
        proj_hidden=2048,      # dense head: per-location MLP (1x1 convs) hidden width ...
        proj_dim=128,          # ... output width ...
        proj_layers=2,         # ... and depth (the image head, when on, has the same shape)
        head_bn=True,          # BatchNorm after the heads' hidden layers (over all locations)
    ))
    if not vit:
        c.objective.feature_stage = 4  # ResNet stage whose map gives the per-location features
    c.ema = ml_collections.ConfigDict(dict(name="cosine", base=0.99, final=1.0))
    c.data.update(dense_views.config_fields())   # every view field, at its default
    c.global_batch = 512
    common.ssl4eo_recipe(c, optim_name=optim, lr=lr)
    c.checkpoint_every = 1000
    c.log_every = 50
    if "demo" in variants:
        demo(c, vit)
    return c


def demo(c, vit: bool) -> None:
    """The 32 px synthetic scenes on the CPU in a few minutes. ViT: tiny, patch 4 (8×8 grid).
    ResNet-18: the last stage of a 32 px view is 1×1, so the dense term reads stage 2 (4×4) and
    the image-level term (weight 0.5) trains stages 3–4."""
    c.model.img_size = 32
    if vit:
        c.model.update(dict(name="vit_tiny_patch16", patch_size=4, depth=4, drop_path_rate=0.0))
        c.objective.num_locations = 16
    else:
        c.model.name = "resnet18"
        c.objective.feature_stage = 2
        c.objective.num_locations = 8
        c.objective.image_weight = 0.5
    c.objective.update(dict(proj_hidden=256, proj_dim=64))
    c.data.update(dict(crop_scale=(0.3, 1.0), blur_p=(0.5, 0.1), blur_sigma=(0.1, 1.0)))
    common.demo_run(c, batch=64, steps=300, lr=1e-3, warmup_steps=30)
