"""GFM's views: one random crop, normalised, no photometric change (REFERENCE §4).

Masks are drawn on the device; with ``teacher_size`` the same crop is also rendered for the frozen
teacher at its own size and bands.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from geossl.data import augment
from geossl.data import bands as bands_lib


@dataclasses.dataclass(frozen=True)
class MaskedCropConfig:
    """GFM views: RandomResizedCrop(img_size, scale 0.67–1) + horizontal flip; the teacher view
    (``teacher_size``, ``teacher_bands``, default ``bands``) is the same crop."""

    img_size: int = 192
    crop_scale: tuple[float, float] = (0.67, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    teacher_size: int | None = None
    teacher_bands: tuple[str, ...] | None = None
    bands: tuple[str, ...] = bands_lib.S2_L1C
    norm: str = "softcon"
    nodata: float | None = None
    nodata_fill: str = "zero"
    zero_fill_b10: bool = True


def masked_crop_sample(record: dict, rng: np.random.Generator, cfg: MaskedCropConfig) -> dict:
    """GFM sample from one random acquisition: image (S, S, C) float32, and teacher_image
    (S_t, S_t, C_t) of the same crop when ``cfg.teacher_size`` is set."""
    image = augment.record_image(record)
    x = image[int(rng.integers(image.shape[0]))]
    plan = augment.record_band_plan(record, cfg.bands, cfg.norm, cfg.zero_fill_b10)
    params = augment.ViewParams(**augment.sample_geometry(
        rng, x.shape[0], x.shape[1], cfg.crop_scale, cfg.crop_ratio, 0.5 if cfg.flip else 0.0))
    out = {"image": augment.render_view(x, plan, params, cfg.img_size, nodata=cfg.nodata,
                                        fill=cfg.nodata_fill)}
    if cfg.teacher_size:
        t_plan = augment.record_band_plan(record, cfg.teacher_bands or cfg.bands, cfg.norm,
                                          cfg.zero_fill_b10)
        out["teacher_image"] = augment.render_view(x, t_plan, params, cfg.teacher_size,
                                                   nodata=cfg.nodata, fill=cfg.nodata_fill)
    return out
