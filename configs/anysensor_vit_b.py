"""Any-sensor SoftCon: one DOFA ViT-B/16 (each band's patch-embedding weights generated from its
central wavelength) pretrained on Sentinel-2 L1C (13 bands) and Sentinel-1 GRD (VV, VH) together.

    python main.py --config=configs/anysensor_vit_b.py --workdir=DIR \
        --config.data.sets.s2.train='/data/ssl4eo/s2-train-*.tfrecord' \
        --config.data.sets.s1.train='/data/ssl4eo/s1-train-*.tfrecord' \
        --config.init.torch_checkpoint=dofa_base_patch16_224.pth   # optional: torchgeo's DOFA

``config.data.sets`` (geossl.data.band_sets): each global batch comes whole from one set, drawn by
weight: ``s2`` (0.4) and ``s1`` (0.4), one sensor per batch, both views of a location from that
sensor (two seasons, as SoftCon); ``s2_s1`` (0.2), cross-sensor positives: view 1 from the S2
record, view 2 from the S1 record of the same location (SSL4EO-S12's S1 and S2 patches are
co-registered; the two sets must list the same locations in one order). VH gets a wavelength
code of its own (``data.wavelengths``; see ``VH_WAVELENGTH``). The train step compiles
three times (13-band, 2-band and paired batches) and reuses each. Multi-labels of both sensors are
the location's land cover, so SoftCon's soft targets hold across sensors. Everything else is
``configs/softcon.py``'s ViT recipe (AdamW, SSL4EO-S12 schedule, mask ratio 0.5, EMA teacher).
Probe either sensor with the same encoder: ``geossl.eval.linear_probe --dataset=synthetic`` (S2) or
``--dataset=synthetic:s1``.
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs.softcon import softcon

VARIANTS = ("demo",)

#: VH's wavelength code (µm); VV keeps DOFA v1's 3.75. A placeholder like 3.75 (C band is
#: 5.55 cm): only distinctness matters to the generator.
VH_WAVELENGTH = 3.85


def sets(s2_weight: float = 0.4, s1_weight: float = 0.4, pair_weight: float = 0.2):
    """``config.data.sets``: S2 and S1 shard sets ("" = the synthetic demo renderings) and their
    cross-sensor pairs."""
    return ml_collections.ConfigDict(dict(
        s2=dict(train="", bands=common.S2_L1C_BANDS, weight=s2_weight),
        s1=dict(train="", bands=common.S1_BANDS, weight=s1_weight),
        s2_s1=dict(pair=("s2", "s1"), weight=pair_weight),
    ))


def get_config(arg=None):
    variants = common.parse_arg(arg, VARIANTS)
    c = softcon("vit_base_patch14", None, optim="adamw", lr=1.5e-4 * 4096 / 256)
    c.model = ml_collections.ConfigDict(dict(name="dofa_base_patch16_224", img_size=224,
                                             in_chans=13, dtype="float32", drop_path_rate=0.0,
                                             remat=False))
    c.data.sets = sets()
    c.data.views = "host"  # one band list per batch set: rendered by the grain workers
    c.data.channel_drop_max = 1  # RandomChannelDrop (off by default) must fit S1's two bands
    # VH a code of its own: under DOFA v1's convention (VV = VH = 3.75 µm) the generator gives
    # both one kernel, so the model sees only VV + VH (geossl.data.bands.WAVELENGTHS)
    c.data.wavelengths = ml_collections.ConfigDict({"VH": VH_WAVELENGTH})
    if "demo" in variants:
        c.model.update(dict(name="dofa_small_patch16_224", img_size=32, patch_size=8,
                            embed_dim=192, depth=4, num_heads=3))
        c.objective.update(dict(proj_hidden=512, proj_dim=128, pred_hidden=512))
        c.data.crop_scale = (0.5, 1.0)
        common.demo_run(c, batch=64, steps=1500, lr=1e-3, warmup_steps=50, probe_every=0)
    return c
