"""Dense objective's views: two overlapping augmented crops of one location, geometry kept.

Each view is a random resized crop (+ flips, brightness/contrast, grayscale, blur) rendered on the
host with the view kit (``geossl.data.views``). Its geometry travels with the sample as numbers,
so the objective can find which point of view 2 sees the ground under a point of view 1
(``geometry`` below). The paper (REFERENCE §5) states only "two overlapping augmented views";
the second crop is redrawn (at most ``overlap_tries`` times) until it shares at least
``min_overlap`` of the smaller crop's area with the first.

Geometry of a view, ``(6,)`` float32: ``top, left, height, width`` of the crop box in pixels of
the record's acquisition, then ``vflip, hflip`` in {0, 1}. A view of S×S pixels maps view
coordinates (u, v) (pixel edges: 0..S) to ground (acquisition) coordinates
``y = top + u'·height/S``, ``x = left + v'·width/S``, u' = S − u when vflip (else u), v' likewise.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from geossl.data import augment, views
from geossl.errors import ConfigError

SEASONS = views.SEASONS
GEOMETRY_FIELDS = ("top", "left", "height", "width", "vflip", "hflip")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DenseViewConfig(views.BandSpec, views.CropSpec, views.PhotometricSpec):
    """Dense views (the kit's specs, ``geossl.data.views``, plus):

    seasons: "same" (both views from one random acquisition), "independent" (each drawn
    uniformly) or "distinct" (two different acquisitions when T > 1).
    min_overlap / overlap_tries: view 2's crop is redrawn until it shares min_overlap of the
    smaller crop's area with view 1's (0: independent crops), at most overlap_tries times.
    keep_masks: carry each view's ``land_cover`` map (nearest neighbour) as mask1 / mask2 (S, S)
    uint8, for inspection; the loss ignores them.
    Differs from the kit's defaults: crops of scale 0.2–1 with vertical flips too (overhead
    imagery has no "up"), blur p 1.0 / 0.1 (SSL4EO-S12's two views).
    """

    crop_scale: tuple[float, float] = (0.2, 1.0)
    vflip: bool = True
    blur_p: views.PerView = (1.0, 0.1)
    seasons: str = "same"
    min_overlap: float = 0.25
    overlap_tries: int = 10
    keep_masks: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.seasons not in SEASONS:
            raise ConfigError(f"config.data.seasons: expected one of {SEASONS}, found "
                              f"{self.seasons!r}")
        if not 0.0 <= self.min_overlap <= 1.0:
            raise ConfigError(f"config.data.min_overlap: expected a fraction in [0, 1], found "
                              f"{self.min_overlap!r}")
        if self.overlap_tries < 1:
            raise ConfigError(f"config.data.overlap_tries: expected >= 1, found "
                              f"{self.overlap_tries!r}")


def config_fields() -> dict:
    """``config.data`` fields of the dense views (``img_size`` is ``config.model.img_size``)."""
    return views.config_fields(DenseViewConfig, fixed=("img_size",))


def view_config(config) -> DenseViewConfig:
    """The dense views from ``config.data`` at ``config.model.img_size``."""
    return views.from_config(DenseViewConfig, config.data, img_size=config.model.img_size)


def overlap_fraction(a: augment.Box, b: augment.Box) -> float:
    """Area shared by boxes a and b (top, left, h, w) over the smaller box's area."""
    h = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    w = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(h, 0) * max(w, 0) / min(a[2] * a[3], b[2] * b[3])


def geometry(params: augment.ViewParams) -> np.ndarray:
    """(6,) float32 (top, left, height, width, vflip, hflip) of a view's crop."""
    return np.array([*params.box, float(params.vflip), float(params.hflip)], np.float32)


def _draw_geometry(rng, height, width, cfg: DenseViewConfig, first: augment.Box | None) -> dict:
    tries = 1 if first is None or cfg.min_overlap == 0 else cfg.overlap_tries
    for _ in range(tries):
        geo = cfg.draw(rng, height, width)
        if first is None or overlap_fraction(first, geo["box"]) >= cfg.min_overlap:
            break
    return geo


def two_view_sample(record: dict, rng: np.random.Generator, cfg: DenseViewConfig) -> dict:
    """One dense sample: view1, view2 (S, S, C) float32, geometry1, geometry2 (6,) float32
    (``GEOMETRY_FIELDS``), and with ``keep_masks`` mask1, mask2 (S, S) uint8. rng order:
    acquisitions, view 1 (geometry, photometric), view 2 (geometry tries, photometric)."""
    image = augment.record_image(record)
    t, height, width = image.shape[:3]
    plan = cfg.band_plan(record)
    c = len(plan.bands_out)
    masks = _land_cover(record, image.shape) if cfg.keep_masks else None
    out, first = {}, None
    for view, acq in enumerate(views.pick_acquisitions(rng, t, cfg.seasons)):
        geo = _draw_geometry(rng, height, width, cfg, first)
        first = geo["box"] if first is None else first
        params = cfg.draw_view(rng, geo, view, c)
        out[f"view{view + 1}"] = views.render(cfg, image[acq], plan, params, cfg.img_size,
                                              into=f"view{view + 1}")
        out[f"geometry{view + 1}"] = geometry(params)
        if masks is not None:
            out[f"mask{view + 1}"] = augment.render_class_map(masks[acq], params, cfg.img_size)
    return out


def _land_cover(record: dict, image_shape) -> np.ndarray:
    """The record's ``land_cover`` (T, H, W) uint8, checked against its image."""
    key = record.get("key", "?")
    if "land_cover" not in record:
        raise ValueError(f"record {key}: config.data.keep_masks needs a 'land_cover' feature "
                         f"(T, H, W) uint8, the record has {sorted(record)}")
    masks = np.asarray(record["land_cover"])
    if masks.shape != tuple(image_shape[:3]):
        raise ValueError(f"record {key}: land_cover has shape {masks.shape}, expected "
                         f"{tuple(image_shape[:3])} (T, H, W) like its image")
    return masks.astype(np.uint8, copy=False)
