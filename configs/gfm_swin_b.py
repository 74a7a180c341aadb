"""GFM: Swin-B student at 192 px distilled from a frozen ImageNet-22k Swin-B teacher while it learns
SimMIM reconstruction, on GeoPile-like RGB image folders (REFERENCE §4). ``:ms`` for a 13-band S2
student, ``:demo`` for the CPU.

    python -m data_prep.images --input /data/GeoPile/NAIP,/data/GeoPile/RESISC45,... --output /data/geopile \
        --mixed_sizes   # the sources differ in size; the 192 px training crops take any
    python main.py --config=configs/gfm_swin_b.py --workdir=DIR \
        --config.data.train='/data/geopile/train-*.tfrecord' \
        --config.teacher.torch_checkpoint=/weights/swin_base_patch4_window7_224_22k.pth
    python main.py --config=configs/gfm_swin_b.py:demo --workdir=/tmp/gfm_demo

Faithful to the official code (mmendiet/GFM ``models/teacher.py``, ``config.py``, and the SimMIM
config ``simmim_pretrain__swin_base__img192_window6__100ep.yaml`` it cites):
- student Swin-B (embed 128, depths 2-2-18-2, heads 4-8-16-32, window 6, patch 4) at 192 px, random
  init, drop path 0; its mask token (trunc-normal 0.02) replaces the masked patch embeddings;
- masks of 32 px units, ratio 0.6, ceil(0.6·units) masked per image (22 of 36 at 192 px);
- decoder: 1×1 conv from the final-normed 1024-d map to 32²·C, pixel shuffle 32;
  L_MIM = Σ|x − x̂|·M / (ΣM + 1e-5) / C on the normalised input;
- teacher Swin-B (window 7, 224 px, ``teacher.torch_checkpoint``: timm or Microsoft layout),
  frozen, on the unmasked crop resized to 224 (bilinear, corners aligned); f = average pool of
  stage 3 after its patch merging (1024-d, not normalised) for both networks; projector
  Linear(1024, 1024) with bias; L_feat = −mean cos(P(f_S), sg(f_T)); L = L_MIM + 1.0·L_feat;
- AdamW (0.9, 0.999), eps 1e-8, weight decay 0.05 on matrices only (not on 1-D parameters, biases,
  the mask token, position or relative-position tables); lr 2e-4, warmup lr 1e-6, min lr 1e-5, each
  × batch/512 (computed here for ``global_batch``); 10 warmup epochs of 100, cosine over the whole
  run (timm's CosineLRScheduler without warmup_prefix, the warmup over its start); clip 5.0;
  batch 1024 (128 × 8 GPUs); GeoPile ~600k images;
- RandomResizedCrop(192, scale 0.67–1, ratio 3/4–4/3) + horizontal flip, ImageNet normalisation
  (8-bit R, G, B bands with ``data.norm = "meanstd"``: ImageNet's mean and std).

Not faithful or not confirmed:
- the teacher runs in eval mode and without gradients (the official code leaves it in train mode
  and freezes it by a checkpoint-path test; Swin has no BatchNorm, drop path is 0, so the outputs
  agree); ``teacher.model.dtype = "bfloat16"`` stores and runs it in bfloat16 (an option; the
  official code uses fp16 autocast for both networks);
- the decoder and projector are initialised like torch's default layers' kernels (uniform ±1/√fan_in)
  with zero biases;
- ``:ms`` (13-band S2 student, teacher on B4, B3, B2) is not in the official code: the student's
  normalised bands (``softcon``: μ ± 2σ → [0, 1]) are read as RGB intensities in [0, 1] and mapped
  into ImageNet's normalisation, (v − mean) / std (``teacher.input_scale`` / ``input_offset``).
"""

from __future__ import annotations

import ml_collections

from configs import common, softcon_rn50
from geossl.objectives import gfm_views

VARIANTS = ("ms", "demo")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: GeoPile: NAIP, RSD46-WHU, MLRSNet, RESISC45, PatternNet (REFERENCE §4).
GEOPILE_IMAGES = 600_000


def unit_to_imagenet() -> dict:
    """Teacher input map for a student band in [0, 1] read as an RGB intensity: (v − mean)/std."""
    return dict(input_scale=tuple(1 / s for s in IMAGENET_STD),
                input_offset=tuple(-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)))


def get_config(arg=None):
    variants = common.parse_arg(arg, VARIANTS)
    c = common.base()
    c.model = ml_collections.ConfigDict(dict(
        name="swin_base_patch4_window7_224", img_size=192, window_size=6, in_chans=3,
        drop_path_rate=0.0, dtype="float32", remat=False))
    c.objective = ml_collections.ConfigDict(dict(
        name="gfm",
        mask_unit=32,        # mask unit side in pixels (SimMIM MASK_PATCH_SIZE)
        mask_ratio=0.6,      # ceil(0.6·units) units masked per image
        feat_weight=1.0,     # α of L = L_MIM + α·L_feat
    ))
    # input_scale / input_offset: teacher input = student's normalised bands · scale + offset.
    c.teacher = common.teacher(
        dict(name="swin_base_patch4_window7_224", img_size=224, window_size=7, in_chans=3,
             dtype="float32"),
        torch_checkpoint="",  # swin_base_patch4_window7_224_22k.pth (Microsoft) or timm's
        bands=common.RGB_BANDS, input_scale=(1.0, 1.0, 1.0),
        input_offset=(0.0, 0.0, 0.0))
    c.data.update(gfm_views.config_fields())   # every view field, at its default
    c.data.bands = common.RGB_BANDS
    c.data.norm = "meanstd"
    c.data.num_classes = 45      # probe labels of RESISC45-like folders
    c.optim = common.optim("adamw", weight_decay=0.05, decay="matrices", b1=0.9, b2=0.999,
                           eps=1e-8, clip_norm=5.0)
    c.global_batch = 1024
    schedule(c, GEOPILE_IMAGES, epochs=100, base=2e-4, warmup_init=1e-6, final=1e-5,
             warmup_epochs=10)
    c.checkpoint_every = 1000
    c.log_every = 50
    if "ms" in variants:
        c.model.in_chans = len(common.S2_L1C_BANDS)
        c.data.bands = common.S2_L1C_BANDS
        c.data.norm = "softcon"
        c.data.num_classes = 9
        c.teacher.bands = ("B4", "B3", "B2")
        c.teacher.update(unit_to_imagenet())
    if "demo" in variants:
        demo(c)
    return c


def schedule(c, num_examples: int, *, epochs: float, base: float, warmup_init: float,
             final: float, warmup_epochs: float) -> None:
    """Epochs, ``total_steps`` and the warmup-cosine lr at ``global_batch``; the three lrs are per
    512 images (× global_batch/512, as GFM / SimMIM). Computed once here: a
    ``--config.global_batch`` override does not rescale them."""
    scale = c.global_batch / 512
    common.epoch_schedule(c, epochs, num_examples)
    c.lr = common.warmup_cosine(base * scale, common.steps_for(warmup_epochs, num_examples,
                                                               c.global_batch),
                                final * scale, warmup_init=warmup_init * scale,
                                cosine_from="step0")   # timm's CosineLRScheduler, as GFM builds it


def demo(c) -> None:
    """Tiny Swins on the 32 px synthetic demo scenes (13 bands), each one stage of 4 blocks and a
    patch merging (depths (4, 0)): the feature GFM distils, the last patch-merging output, is then
    the one the linear probe reads (normalised). The student (embed 32, window 4, stride 8) masks
    4 of 16 units of 8 px; the teacher (embed 32, window 6, 48 px, the same 13 bands) is
    pretrained by geossl with SoftCon (``teacher.torch_checkpoint = "pretrained:softcon"``, the
    run :func:`demo_teacher_run`) when the trainer first builds it, written once as a safetensors
    checkpoint in the Microsoft layout and imported like a real one. It reads the bands it was
    pretrained on, in the student's normalisation: input map identity.

    Three settings differ from GFM's, each measured (README, the GFM demo row): mask ratio 0.25
    instead of 0.6 and ``feat_weight`` 10 instead of 1 (the cosine loss reaches the classes only
    once it is fitted to ~0.99: the teacher's pooled feature is one common direction plus small
    class-bearing ones), and 30 epochs of the 2048 locations (960 steps). (An RGB teacher on B4,
    B3, B2 left the student below a random encoder: the synthetic classes are told apart by their
    13-band spectra.)"""
    tiny = dict(name="swin_tiny_patch4_window7_224", embed_dim=32, depths=(4, 0), num_heads=(2, 4))
    c.model.update(dict(tiny, img_size=32, window_size=4, in_chans=len(common.S2_L1C_BANDS)))
    c.data.bands = common.S2_L1C_BANDS
    c.data.norm = "softcon"
    c.data.num_classes = 9
    c.objective.update(dict(mask_unit=8, mask_ratio=0.25, feat_weight=10.0))
    c.teacher.model.update(dict(tiny, img_size=48, window_size=6, in_chans=len(c.data.bands)))
    c.teacher.update(dict(bands=c.data.bands, input_scale=(1.0,) * len(c.data.bands),
                          input_offset=(0.0,) * len(c.data.bands)))
    c.teacher.torch_checkpoint = "pretrained:softcon"   # written once, read like a real checkpoint
    c.teacher.pretrain = demo_teacher_run(c.teacher.bands, c.data.norm)
    c.global_batch = 64
    schedule(c, 2048, epochs=30, base=8e-3, warmup_init=1e-5, final=1e-5,  # 1e-3 at 64
             warmup_epochs=1)                        # 2048: the synthetic training locations
    common.demo_run(c, batch=64, adamw=False, ema_base=None, probe_every=100)


def demo_teacher_run(bands, norm: str, steps: int = 800) -> ml_collections.ConfigDict:
    """``config.teacher.pretrain`` of the demo: SoftCon's ResNet demo run (configs/softcon.py:
    masked 8 px squares filled with 0, batch 64, AdamW) for ``steps`` on ``bands`` in ``norm``,
    less its ``model``: the trainer pretrains ``config.teacher.model`` (a Swin, which SoftCon masks
    like a ResNet, by pixels). Two changes for this teacher: lr 3e-3 instead of 1e-3, and no
    grayscale views (their band mean erases the spectra that tell the synthetic classes apart):
    linear probe micro mAP 85.1 instead of 73.7 (71.1 at random init) for a (2, 2) Swin at 400
    steps. The demo's (4, 0) Swin gets 800: its distilled feature probes 87.3 on uncropped probe
    images (83.8 at 400 steps)."""
    run = softcon_rn50.get_config("demo")
    del run.model
    run.data.update(dict(bands=tuple(bands), norm=norm, gray_p=0.0))
    run.lr.base = 3e-3
    run.total_steps = steps
    return run
