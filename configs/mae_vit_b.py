"""MAE (He et al., CVPR 2022) with a ViT-B/16, 13-band S2 L1C on SSL4EO-S12; ``:rgb`` for 8-bit
R, G, B image folders, ``:demo`` for the CPU.

    python main.py --config=configs/mae_vit_b.py --workdir=DIR \
        --config.data.train='/data/ssl4eo/train-*.tfrecord'
    python main.py --config=configs/mae_vit_b.py:demo --workdir=/tmp/mae_demo

From the paper and its code (facebookresearch/mae ``models_mae.py``, ``main_pretrain.py``):
mask ratio 0.75 (per-sample random, encoder on the kept 25%); decoder 8 blocks of width 512,
16 heads, fixed sine-cosine position embeddings; per-patch MSE on the masked patches, with
``norm_pix_loss`` (the setting of the paper's tables and of its README's pretraining command);
AdamW β (0.9, 0.95), weight decay 0.05 on every trained parameter of 2+ dimensions, the class
and mask tokens included (timm's ``add_weight_decay``; biases and norms are 1-D, the position
tables fixed), lr 1.5e-4 × batch / 256, batch 4096, cosine after a warmup; RandomResizedCrop(224,
scale 0.2–1) + horizontal flip.
Not from the paper: 100 epochs with 10 of warmup (the paper trains ImageNet for 800–1600 epochs
with 40 of warmup; SSL4EO-S12's public MAE script runs 200 epochs with 10 of warmup at mask ratio
0.7); bilinear resized crops (MAE: bicubic); the ViT is timm's ``vit_base_patch16_224`` without
LayerScale.
"""

from __future__ import annotations

import ml_collections

from configs import common
from geossl.objectives import mae

VARIANTS = ("rgb", "demo")


def get_config(arg=None):
    variants = common.parse_arg(arg, VARIANTS)
    c = common.base()
    c.model = ml_collections.ConfigDict(dict(
        name="vit_base_patch16", img_size=224, in_chans=13, drop_path_rate=0.0, dtype="float32",
        remat=False))
    c.objective = ml_collections.ConfigDict(dict(
        name="mae",
        mask_ratio=0.75,        # fraction of the patches the encoder never sees
        norm_pix_loss=True,     # standardise each target patch by its own mean and variance
        decoder_dim=512, decoder_depth=8, decoder_heads=16,
    ))
    c.data.update(mae.config_fields())   # every view field, at its default
    c.global_batch = 4096
    common.epoch_schedule(c, 100, common.SSL4EO_LOCATIONS)
    # timm's add_weight_decay over the trained parameters: all but the 1-D ones (biases, norms),
    # the fixed position table and the encoder's mask token (MAE drops the masked patches)
    c.optim = common.optim("adamw", weight_decay=0.05, b1=0.9, b2=0.95,
                           decay=r"regex:(bias|scale)$|^backbone/(pos_embed|mask_token)$")
    c.lr = common.warmup_cosine(1.5e-4 * c.global_batch / 256,
                                common.steps_for(10, common.SSL4EO_LOCATIONS, c.global_batch), 0.0)
    c.checkpoint_every = 1000
    c.log_every = 50
    if "rgb" in variants:
        c.model.in_chans = 3
        c.data.bands = common.RGB_BANDS
        c.data.norm = "meanstd"         # ImageNet statistics for 8-bit R, G, B
        c.data.num_classes = 45         # class folders of the probe labels (RESISC45-like)
    if "demo" in variants:
        demo(c)
    return c


def demo(c) -> None:
    """Tiny ViT (patch 4, 4 blocks) on the 32 px synthetic scenes (13 bands, an 8×8 grid of which
    the encoder sees 16 patches), decoder 2 blocks of width 64, 3000 steps at lr 3e-3 (linear
    probe micro mAP at 2000 steps: 83.3 at 1.5e-3, 85.8 at 3e-3, 85.3 at 6e-3). Per-band mean / std
    input (``norm="meanstd"``, SSL4EO-S12's statistics): under ``softcon``'s [0, 1] scaling the
    patch embeddings are small beside MAE's fixed sine-cosine position table (values up to 1), the
    blocks act on positions and the features stay near-linear in the pixels (linear probe below a
    random encoder, README)."""
    c.model.update(dict(name="vit_tiny_patch16", patch_size=4, depth=4, img_size=32,
                        in_chans=len(common.S2_L1C_BANDS)))
    c.data.bands = common.S2_L1C_BANDS
    c.data.norm = "meanstd"
    c.data.crop_scale = (0.5, 1.0)
    c.objective.update(dict(decoder_dim=64, decoder_depth=2, decoder_heads=4))
    common.demo_run(c, batch=64, steps=3000, lr=3e-3, warmup_steps=50, ema_base=None,
                    probe_every=0)
