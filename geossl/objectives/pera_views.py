"""PerA's views: perfectly aligned pairs, one crop rendered twice with different photometry.

Per crop, one geometry (box, horizontal and vertical flips) is shared by a student and a teacher
version that differ only in their photometric draws (REFERENCE §3): ``num_global`` pairs at
``global_size`` and ``num_local`` at ``local_size``, all from one random acquisition.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from geossl.data import augment, views
from geossl.errors import ConfigError

STUDENT, TEACHER = 0, 1   # the two photometric policies (views.PhotometricSpec's view 0, 1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MultiCropConfig(views.BandSpec, views.CropShape, views.PhotometricSpec):
    """PerA views (REFERENCE §3; the kit's specs, ``geossl.data.views``, with per-view
    photometric fields as (student, teacher)): student jitter p 0.8 with gray instead of jitter
    p 0.1, teacher jitter p 0.1 (brightness 0.4, contrast 0.4; saturation 0.2 and hue 0.1 apply
    with ``rgb_jitter``, torchvision's ColorJitter); vertical flips too; global crops
    (``global_size``: the model's input) of scale 0.4–1, local crops of 96 px, scale 0.05–0.4;
    resized with antialiasing (torchvision's RandomResizedCrop, antialias=True).
    """

    antialias: bool = True
    vflip: bool = True
    jitter_p: views.PerView = (0.8, 0.1)
    gray_p: views.PerView = (0.1, 0.0)
    gray_replaces_jitter: views.PerView = (True, False)
    saturation: float = 0.2
    hue: float = 0.1
    global_size: int = 224
    local_size: int = 96
    num_global: int = 2
    num_local: int = 8
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)

    def __post_init__(self):
        super().__post_init__()
        views.check_range("global_scale", self.global_scale)
        views.check_range("local_scale", self.local_scale)
        for name in ("num_global", "num_local"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config.data.{name}: expected a count >= 0, found "
                                  f"{getattr(self, name)!r}")

    @property
    def student(self) -> augment.Photometric:
        return self.photometric(STUDENT)

    @property
    def teacher(self) -> augment.Photometric:
        return self.photometric(TEACHER)

    def crops(self) -> tuple[tuple[str, int, views.CropSpec], ...]:
        """(name, count, CropSpec) of the global and the local crops."""
        shape = dict(crop_ratio=self.crop_ratio, flip=self.flip, vflip=self.vflip)
        return (("global", self.num_global, views.CropSpec(
                    img_size=self.global_size, crop_scale=self.global_scale, **shape)),
                ("local", self.num_local, views.CropSpec(
                    img_size=self.local_size, crop_scale=self.local_scale, **shape)))


def config_fields() -> dict:
    """``config.data`` fields of PerA's views (``global_size`` is ``config.model.img_size``)."""
    return views.config_fields(MultiCropConfig, fixed=("global_size",))


def view_config(config) -> MultiCropConfig:
    """PerA's views from ``config.data``, global crops at ``config.model.img_size``."""
    return views.from_config(MultiCropConfig, config.data, global_size=config.model.img_size)


def multi_crop_sample(record: dict, rng: np.random.Generator, cfg: MultiCropConfig) -> dict:
    """PerA sample from one random acquisition: global_student / global_teacher (G, S, S, C) and
    local_student / local_teacher (L, s, s, C) float32; pair i shares its crop and flips."""
    image = augment.record_image(record)
    x = image[views.pick_one(rng, image.shape[0])]
    plan = cfg.band_plan(record)
    c = len(plan.bands_out)
    out = {}
    for name, n, crop in cfg.crops():
        size = crop.img_size
        student = np.empty((n, size, size, c), np.float32)
        teacher = np.empty((n, size, size, c), np.float32)
        for i in range(n):
            geo = crop.draw(rng, x.shape[0], x.shape[1])
            raw = cfg.render_geometry(x, plan, augment.ViewParams(**geo), size)
            pairs = ((student, STUDENT, raw.copy()), (teacher, TEACHER, raw))
            for dst, version, src in pairs:
                params = cfg.draw_view(rng, geo, version, c)
                dst[i] = augment.render_photometric(src, plan, params, **cfg.render_constants())
        out[f"{name}_student"], out[f"{name}_teacher"] = student, teacher
    return out
