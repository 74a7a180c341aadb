"""PerA ViT-B/16 at 448 px, RGB; ``:ms`` for 13-band S2 L1C, ``:demo`` for the CPU (REFERENCE §3).

    python -m data_prep.images --input /data/rgb_scenes --output /data/rgb
    python main.py --config=configs/pera_vit_b.py --workdir=DIR \
        --config.data.train='/data/rgb/train-*.tfrecord' --config.data.num_classes=N
    python main.py --config=configs/pera_vit_b.py:demo --workdir=/tmp/pera_demo

Faithful to the official code (SathShen/PerA, Configs/pera_vitb.yaml): ViT-B/16 without
LayerScale (timm ``vit_base_patch16_224`` layout; the export loads into it), 448 px, student drop
path 0.3 in every block as DINOv2's blocks apply it above 0.1 (each residual branch computed on
int(0.7·B) random samples of a crop batch, added scaled by B / int(0.7·B)); 2 global pairs
(scale 0.4–1) + 8 local pairs of 96 px (scale 0.05–0.4), one geometry per pair, student / teacher
photometry as in ``pera_views.MultiCropConfig`` (RGB: torchvision's ColorJitter, brightness 0.4 /
contrast 0.4 / saturation 0.2 / hue 0.1 in random order on x / 255, luma grayscale, then ImageNet's
mean and std: 8-bit R, G, B bands as ``data_prep.images`` writes them, ``data.rgb_jitter``); masks
student round(0.2·L), learn round(0.4·L) − round(0.2·L), teacher the rest (local crops: no learn
positions); the student's mask token enters before block depth//2; class head 768→2048→2048→384 → L2
→ weight-normalised prototypes (g trained from 1, K = 131072), pixel head of the same shape to p²·C;
loss 1.0·DINO (same-index pairs) + 0.1·KoLeo + 0.01·MSE; student τ 0.1, teacher τ 0.03 → 0.05 over
30 epochs (numpy linspace: 0.05 at the last warmup step), centre momentum 0.9; position table
resized for the 96 px local crops (6×6 patches) as DINOv2's ``interpolate_pos_encoding``
(``model.pos_embed_resize="dinov2"``); EMA cosine 0.992 → 1; AdamW (0.9, 0.999, eps 2e-5) decaying
every parameter, weight decay cosine 0.04 → 0.2; lr warmup 20 epochs to 1e-3 (numpy linspace, as the
teacher temperature), cosine to 1e-6; clip 3.0; 200 epochs.

Not confirmed or not faithful:
- KoLeo is computed over the global batch (the official code: per GPU batch of 16).
- The global batch (official: 16 per GPU, GPU count unconfirmed) and the dataset size (hence the
  step counts) are placeholders here: ``global_batch`` 128, ``num_examples`` 250k.
- 16-bit training (official: ``--dtype`` bf16 by default, fp16 in its config file) is not
  reproduced: float32 by default (``model.dtype``).
- ``:ms`` is not in the official code: 13 S2 L1C bands with SSL4EO-S12's per-band mean / std,
  brightness / contrast per band on the standardised values (no [0, 1] clip: that domain is
  unbounded), grayscale = band mean, no saturation / hue.
- ``data.num_classes`` is the class count of the image folders (the probe's labels).
"""

from __future__ import annotations

import ml_collections

from configs import common
from geossl.objectives import pera_views

VARIANTS = ("ms", "demo")


def get_config(arg=None):
    variants = common.parse_arg(arg, VARIANTS)
    c = common.base()
    c.model = ml_collections.ConfigDict(dict(
        name="vit_base_patch16", img_size=448, in_chans=3,
        drop_path_rate=0.3, drop_path_uniform=True,  # the student's; the teacher has none
        drop_path_subset=True,  # DINOv2's blocks above 0.1: the branch on int(0.7·B) samples only
        pos_embed_resize="dinov2",  # local crops: DINOv2's interpolate_pos_encoding (28 → 6)
        dtype="float32", remat=False))
    c.objective = ml_collections.ConfigDict(dict(
        name="pera",
        student_ratio=0.2,          # student patches: round(0.2·L)
        learn_ratio=0.4,            # student + learn: round(0.4·L); the teacher sees the rest
        insert_at_block=6,          # depth//2: the student's mask tokens enter before this block
        num_prototypes=131072,      # K
        head_hidden=2048, head_bottleneck=384, head_layers=3,
        student_temp=0.1,
        teacher_temp=0.03,          # linear warmup start ...
        teacher_temp_final=0.05,    # ... and end
        teacher_temp_warmup_steps=0,  # 30 epochs, set below
        center_momentum=0.9,
        dino_weight=1.0, koleo_weight=0.1, mse_weight=0.01,
        dense_student=False,        # True: every token visible (memory reference, benchmarks)
    ))
    c.data.update(pera_views.config_fields())   # every view field, at its default
    c.data.bands = common.RGB_BANDS  # 8-bit, ImageNet statistics
    c.data.norm = "meanstd"
    c.data.rgb_jitter = True        # torchvision ColorJitter (+ saturation / hue), luma grayscale
    c.data.num_classes = 45         # class folders of the probe labels (RESISC45-like)
    c.ema = ml_collections.ConfigDict(dict(name="cosine", base=0.992, final=1.0))
    c.optim = common.optim("adamw", weight_decay=dict(name="cosine", base=0.04, final=0.2),
                           decay="all", b1=0.9, b2=0.999, eps=2e-5, clip_norm=3.0)
    c.global_batch = 128
    steps_per_epoch = common.epoch_schedule(c, 200, common.SSL4EO_LOCATIONS)
    c.objective.teacher_temp_warmup_steps = 30 * steps_per_epoch
    c.lr = common.warmup_cosine(1e-3, 20 * steps_per_epoch, 1e-6, warmup_shape="linspace")
    c.checkpoint_every = 1000
    c.log_every = 50
    if "ms" in variants:
        c.model.in_chans = len(common.S2_L1C_BANDS)
        c.data.bands = common.S2_L1C_BANDS
        c.data.jitter_per_band = True  # multispectral: brightness / contrast per band
        c.data.rgb_jitter = False
        c.data.num_classes = 9
    if "demo" in variants:
        demo(c)
    return c


def demo(c) -> None:
    """Tiny ViT (patch 4, depth 4) on the 32 px synthetic demo scenes (13 bands), 2 global pairs
    at 32 px (64 tokens: student 13, learn 13) and 4 local pairs at 16 px, 256 prototypes, batch
    32: 2000 steps, about 10 minutes on 2 CPU cores. Brightness / contrast take one factor for all
    bands (``data.jitter_per_band = False``): the synthetic classes differ by spectral shape, which
    per-band factors teach the encoder to ignore (measured with an earlier patch-8, 700-step demo:
    linear probe +2.4 micro mAP points over a random encoder with per-band factors, +3.7 without;
    this demo: +10.3)."""
    c.model.update(dict(name="vit_tiny_patch16", patch_size=4, depth=4, img_size=32,
                        in_chans=len(common.S2_L1C_BANDS), drop_path_rate=0.1))
    c.data.bands = common.S2_L1C_BANDS
    c.data.norm = "softcon"
    c.data.jitter_per_band = False
    c.data.rgb_jitter = False
    c.data.num_classes = 9
    c.data.local_size = 16
    c.data.num_local = 4
    c.objective.update(dict(insert_at_block=2, num_prototypes=256, head_hidden=256,
                            head_bottleneck=64, teacher_temp_warmup_steps=150))
    # the offline probe: python -m geossl.eval.linear_probe --dataset=synthetic
    common.demo_run(c, batch=32, steps=2000, lr=1e-3, warmup_steps=50, final_lr=1e-6, adamw=False,
                    checkpoint_every=1000, log_every=50)
