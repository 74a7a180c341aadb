"""GFM's views: one random crop, normalised, no photometric change (REFERENCE §4).

Masks are drawn on the device, where the frozen teacher's input is made from the same crop.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from geossl.data import augment, views


@dataclasses.dataclass(frozen=True, kw_only=True)
class MaskedCropConfig(views.BandSpec, views.CropSpec):
    """GFM views (the kit's specs, ``geossl.data.views``): RandomResizedCrop(img_size 192,
    scale 0.67–1) + horizontal flip, antialiased as the official crop of PIL images."""

    antialias: bool = True
    img_size: int = 192
    crop_scale: tuple[float, float] = (0.67, 1.0)


def config_fields() -> dict:
    """``config.data`` fields of GFM's views (``img_size`` is ``config.model.img_size``)."""
    return views.config_fields(MaskedCropConfig, fixed=("img_size",))


def view_config(config) -> MaskedCropConfig:
    """GFM's views from ``config.data`` at ``config.model.img_size``."""
    return views.from_config(MaskedCropConfig, config.data, img_size=config.model.img_size)


def masked_crop_sample(record: dict, rng: np.random.Generator, cfg: MaskedCropConfig) -> dict:
    """GFM sample from one random acquisition: image (S, S, C) float32."""
    image = augment.record_image(record)
    x = image[views.pick_one(rng, image.shape[0])]
    plan = cfg.band_plan(record)
    params = augment.ViewParams(**cfg.draw(rng, x.shape[0], x.shape[1]))
    return {"image": views.render(cfg, x, plan, params, cfg.img_size, into="image")}
