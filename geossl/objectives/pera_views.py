"""PerA's views: perfectly aligned pairs, one crop rendered twice with different photometry.

Per crop, one geometry (box, horizontal and vertical flips) is shared by a student and a teacher
version that differ only in their photometric draws (REFERENCE §3): ``num_global`` pairs at
``global_size`` and ``num_local`` at ``local_size``, all from one random acquisition.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from geossl.data import augment
from geossl.data import bands as bands_lib


@dataclasses.dataclass(frozen=True)
class MultiCropConfig:
    """PerA views (REFERENCE §3): student jitter p 0.8 with gray instead of jitter p 0.1, teacher
    jitter p 0.1 (brightness 0.4, contrast 0.4; saturation 0.2 and hue 0.1 apply to ``rgb``
    policies, torchvision's ColorJitter); global crops scale 0.4–1, local crops 0.05–0.4."""

    global_size: int = 224
    local_size: int = 96
    num_global: int = 2
    num_local: int = 8
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    student: augment.Photometric = augment.Photometric(jitter_p=0.8, gray_p=0.1,
                                                       gray_replaces_jitter=True,
                                                       saturation=0.2, hue=0.1)
    teacher: augment.Photometric = augment.Photometric(jitter_p=0.1, gray_p=0.0, saturation=0.2,
                                                       hue=0.1)
    jitter_clip: bool = True
    hflip: bool = True
    vflip: bool = True
    bands: tuple[str, ...] = bands_lib.S2_L1C
    norm: str = "softcon"
    nodata: float | None = None
    nodata_fill: str = "zero"
    zero_fill_b10: bool = True


def multi_crop_sample(record: dict, rng: np.random.Generator, cfg: MultiCropConfig) -> dict:
    """PerA sample from one random acquisition: global_student / global_teacher (G, S, S, C) and
    local_student / local_teacher (L, s, s, C) float32; pair i shares its crop and flips."""
    image = augment.record_image(record)
    x = image[int(rng.integers(image.shape[0]))]
    plan = augment.record_band_plan(record, cfg.bands, cfg.norm, cfg.zero_fill_b10)
    c = len(plan.bands_out)
    out = {}
    for name, n, size, scale in (("global", cfg.num_global, cfg.global_size, cfg.global_scale),
                                 ("local", cfg.num_local, cfg.local_size, cfg.local_scale)):
        student = np.empty((n, size, size, c), np.float32)
        teacher = np.empty((n, size, size, c), np.float32)
        for i in range(n):
            geo = augment.sample_geometry(rng, x.shape[0], x.shape[1], scale, cfg.crop_ratio,
                                          0.5 if cfg.hflip else 0.0, 0.5 if cfg.vflip else 0.0)
            raw = augment.render_geometry(x, plan, augment.ViewParams(**geo), size, cfg.nodata,
                                          cfg.nodata_fill)
            pairs = ((student, cfg.student, raw.copy()), (teacher, cfg.teacher, raw))
            for dst, policy, src in pairs:
                params = augment.ViewParams(**geo, **augment.sample_photometric(rng, policy, c))
                dst[i] = augment.render_photometric(src, plan, params, jitter_clip=cfg.jitter_clip)
        out[f"{name}_student"], out[f"{name}_teacher"] = student, teacher
    return out
