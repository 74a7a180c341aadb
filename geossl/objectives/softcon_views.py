"""SoftCon's views: two acquisitions (seasons) of one location, each augmented (REFERENCE §1).

The paper leaves the augmentation open; geossl follows the SSL4EO-S12 MoCo-v3 recipe of the same lab
(zhu-xlab/SSL4EO-S12 ``src/benchmark/pretrain_ssl/pretrain_moco_v3_s2c.py``): RandomResizedCrop,
brightness/contrast p 0.8, grayscale p 0.2, blur p 1.0 (view 1) / 0.1 (view 2), horizontal flip;
the two seasons drawn independently (``distinct_seasons=False``: the same one twice with
probability 1/T); RandomChannelDrop (bands set to 0 in the finished view) off by default, as it is
commented out there, with its arguments (1–6 bands, p 0.5) as fields.

Host path: ``two_view_sample`` renders both views in numpy (grain workers). Device path:
``raw_two_view_sample`` makes the same random draws (``two_view_draws``: one rng order for both
paths) and ships the raw acquisitions with packed parameters; the objective renders them inside the
step with ``geossl.data.device_views.render_views(raw, params, cfg.render_spec())``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from geossl.data import augment, device_views, views
from geossl.errors import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class ViewConfig(views.BandSpec, views.CropSpec, views.PhotometricSpec):
    """SoftCon / SSL4EO-S12 MoCo-v3 views (the kit's specs, ``geossl.data.views``, plus):

    num_classes: label classes K of ``labels`` / ``acq_labels``.
    distinct_seasons: force t1 ≠ t2 (SSL4EO draws the two independently).
    raw_size: device-side views only: acquisitions are zero-padded to raw_size × raw_size so that
    records of different sizes batch together (0: unpadded).
    """

    blur_p: views.PerView = (1.0, 0.1)
    num_classes: int = 9
    distinct_seasons: bool = False
    raw_size: int = 0

    def render_spec(self) -> device_views.RenderSpec:
        """The static settings of the device-side renderer for these views."""
        if self.antialias:
            raise ConfigError("config.data.antialias: the device renderer resizes without "
                              "antialiasing; render on the host (config.data.views='host') or "
                              "set antialias False")
        policies = (self.photometric(0), self.photometric(1))
        blurred = max(p.blur_p for p in policies) > 0
        return device_views.RenderSpec(
            img_size=self.img_size, bands=tuple(self.bands), norm=self.norm,
            jitter_clip=self.jitter_clip,
            blur_sigma_max=float(max(self.blur_sigma)) if blurred else 0.0,
            blur_truncate=self.blur_truncate,
            solarize=max(p.solarize_p for p in policies) > 0,
            solarize_threshold=self.solarize_threshold)


def config_fields() -> dict:
    """``config.data`` fields of SoftCon's views (``img_size`` is ``config.model.img_size``)."""
    return views.config_fields(ViewConfig, fixed=("img_size",))


def view_config(config) -> ViewConfig:
    """SoftCon's views from ``config.data`` at ``config.model.img_size``."""
    return views.from_config(ViewConfig, config.data, img_size=config.model.img_size)


def sample_view_params(rng: np.random.Generator, height: int, width: int, channels: int,
                       cfg: ViewConfig, view: int) -> augment.ViewParams:
    """Draws one view's parameters (geometry, then photometric, then the channel drop)."""
    return cfg.draw_view(rng, cfg.draw(rng, height, width), view, channels)


def two_view_draws(record: dict, rng: np.random.Generator, cfg: ViewConfig):
    """Every random choice of one SoftCon sample, in a fixed rng order (acquisitions, then view 1's
    parameters, then view 2's) shared by the host and the device rendering paths. A record with a
    co-located record of a second sensor (``views.PAIRED_RECORD``, a cross-sensor pair set of
    ``config.data.sets``) gives view 1 from itself and view 2 from that one. Returns one
    (t, acquisition t's image (H,W,C_in), BandPlan, ViewParams, its labels (K,)) per view."""
    sources = (record, record.get(views.PAIRED_RECORD, record))
    images = [augment.record_image(r) for r in sources]
    if images[1] is images[0] or images[0].shape[0] == images[1].shape[0]:
        t1, t2 = views.pick_two(rng, images[0].shape[0], cfg.distinct_seasons)
    else:  # two sensors with their own acquisition counts
        t1, t2 = int(rng.integers(images[0].shape[0])), int(rng.integers(images[1].shape[0]))
    if images[0].shape[1:3] != images[1].shape[1:3]:
        raise ValueError(f"record {record.get('key', '?')}: the two sensors' images differ in size, "
                         f"{images[0].shape[1:3]} vs {images[1].shape[1:3]}; a cross-sensor pair "
                         "needs co-registered images")
    drawn = []
    for view, (source, image, t) in enumerate(zip(sources, images, (t1, t2))):
        plan = cfg.band_plan(source)
        labels = views.acquisition_labels(source, cfg.num_classes)
        params = sample_view_params(rng, image.shape[1], image.shape[2], len(plan.bands_out), cfg,
                                    view)
        drawn.append((t, image[t], plan, params, labels[t]))
    return drawn


def two_view_sample(record: dict, rng: np.random.Generator, cfg: ViewConfig) -> dict:
    """SoftCon sample rendered on the host: acquisitions t1, t2 of one location, each augmented
    independently. Returns view1, view2 (S, S, C) float32 and labels1, labels2 (K,) float32."""
    out = {}
    for view, (_, image, plan, params, labels) in enumerate(two_view_draws(record, rng, cfg), 1):
        out[f"view{view}"] = views.render(cfg, image, plan, params, cfg.img_size,
                                          into=f"view{view}")
        out[f"labels{view}"] = labels
    return out


def raw_two_view_sample(record: dict, rng: np.random.Generator, cfg: ViewConfig) -> dict:
    """SoftCon sample for rendering in the step, from the draws ``two_view_sample`` makes:
    raw1, raw2 (R, R, C) stored units (``device_views.prepare_raw``), view_params1, 2
    (PARAMS + 3·C,) float32 (``device_views.pack_params``), labels1, labels2 (K,) float32."""
    out = {}
    for view, (_, image, plan, params, labels) in enumerate(two_view_draws(record, rng, cfg), 1):
        out[f"raw{view}"] = device_views.prepare_raw(
            image, plan, params, nodata=cfg.nodata, fill=cfg.nodata_fill,
            raw_size=cfg.raw_size, key=record.get("key", "?"))
        out[f"view_params{view}"] = device_views.pack_params(params, len(plan.bands_out))
        out[f"labels{view}"] = labels
    return out
