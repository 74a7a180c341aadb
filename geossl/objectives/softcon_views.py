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
from absl import logging

from geossl.data import augment, device_views
from geossl.data import bands as bands_lib


@dataclasses.dataclass(frozen=True)
class ViewConfig:
    """SoftCon / SSL4EO-S12 MoCo-v3 views, filled from ``config.data`` by
    ``objectives.base.dataclass_from_config``.

    bands: model input bands (a 12-band L2A record gets a zero B10 when ``zero_fill_b10``).
    norm: "softcon" | "meanstd" | "none"; nodata / nodata_fill: see ``geossl.data.bands``.
    blur_p, solarize_p: per view (view 1, view 2).
    distinct_seasons: force t1 ≠ t2 (SSL4EO draws the two independently).
    channel_drop_p / _min / _max: per view, with probability p, n ~ U{min..max} distinct bands are
    set to 0 after every other step (SSL4EO's RandomChannelDrop); p 0 disables it.
    raw_size: device-side views only: acquisitions are zero-padded to raw_size × raw_size so that
    records of different sizes batch together (0: unpadded).
    """

    img_size: int = 224
    bands: tuple[str, ...] = bands_lib.S2_L1C
    norm: str = "softcon"
    num_classes: int = 9
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    brightness: float = 0.4
    contrast: float = 0.4
    jitter_p: float = 0.8
    jitter_per_band: bool = False
    jitter_clip: bool = True
    gray_p: float = 0.2
    blur_p: tuple[float, float] = (1.0, 0.1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_truncate: float = 3.0
    solarize_p: tuple[float, float] = (0.0, 0.0)
    solarize_threshold: float = 0.5
    flip: bool = True
    vflip: bool = False
    distinct_seasons: bool = False
    channel_drop_p: float = 0.0
    channel_drop_min: int = 1
    channel_drop_max: int = 6
    nodata: float | None = None
    nodata_fill: str = "zero"
    zero_fill_b10: bool = True
    raw_size: int = 0

    def __post_init__(self):
        if not 0.0 <= self.channel_drop_p <= 1.0:
            raise ValueError(f"config.data.channel_drop_p: expected a probability in [0, 1], "
                             f"found {self.channel_drop_p}")
        if self.channel_drop_p > 0 and not (
                0 <= self.channel_drop_min <= self.channel_drop_max <= len(self.bands)):
            raise ValueError(f"config.data.channel_drop_min/max: expected 0 <= min <= max <= "
                             f"{len(self.bands)} (the model bands), found "
                             f"{self.channel_drop_min}, {self.channel_drop_max}")

    def photometric(self, view: int) -> augment.Photometric:
        """The photometric policy of view 0 or 1."""
        return augment.Photometric(
            jitter_p=self.jitter_p, brightness=self.brightness, contrast=self.contrast,
            per_band=self.jitter_per_band, gray_p=self.gray_p, blur_p=self.blur_p[view],
            blur_sigma=tuple(self.blur_sigma), solarize_p=self.solarize_p[view],
            channel_drop_p=self.channel_drop_p, channel_drop_min=self.channel_drop_min,
            channel_drop_max=self.channel_drop_max)

    def render_spec(self) -> device_views.RenderSpec:
        """The static settings of the device-side renderer for these views."""
        return device_views.RenderSpec(
            img_size=self.img_size, bands=tuple(self.bands), norm=self.norm,
            jitter_clip=self.jitter_clip,
            blur_sigma_max=float(max(self.blur_sigma)) if max(self.blur_p) > 0 else 0.0,
            blur_truncate=self.blur_truncate, solarize=max(self.solarize_p) > 0,
            solarize_threshold=self.solarize_threshold)


def sample_view_params(rng: np.random.Generator, height: int, width: int, channels: int,
                       cfg: ViewConfig, view: int) -> augment.ViewParams:
    """Draws one view's parameters (geometry, then photometric, then the channel drop)."""
    geo = augment.sample_geometry(rng, height, width, cfg.crop_scale, cfg.crop_ratio,
                                  0.5 if cfg.flip else 0.0, 0.5 if cfg.vflip else 0.0)
    return augment.ViewParams(**geo, **augment.sample_photometric(rng, cfg.photometric(view),
                                                                  channels))


def pick_two(rng: np.random.Generator, t: int, distinct: bool = False) -> tuple[int, int]:
    """Two acquisition indices of T: independent uniform draws (SSL4EO-S12), or different ones
    when ``distinct`` (the same one twice when T == 1)."""
    t1 = int(rng.integers(t))
    if not distinct:
        t2 = int(rng.integers(t))
    elif t == 1:
        t2 = t1
    else:
        t2 = (t1 + 1 + int(rng.integers(t - 1))) % t
    return t1, t2


_unlabelled_seen = 0


def _warn_unlabelled(key: str) -> None:
    """One warning for the 1st, 10th, 100th, ... record without labels seen by this process."""
    global _unlabelled_seen
    _unlabelled_seen += 1
    n = _unlabelled_seen
    if n == 10 ** (len(str(n)) - 1):
        logging.warning("record %s has no 'labels' or 'acq_labels' feature: SoftCon trains it with an "
                        "empty label set (instance term only); %d such record(s) so far in this "
                        "process", key, n)


def acquisition_labels(record: dict, num_classes: int) -> np.ndarray:
    """(T, K) float32 multi-hot per acquisition: ``acq_labels`` (T·K) when present, else the
    record's ``labels`` indices for every acquisition."""
    t = record["image"].shape[0]
    key = record.get("key", "?")
    if "acq_labels" in record:
        k = int(np.asarray(record.get("num_classes", [num_classes])).reshape(-1)[0])
        if k != num_classes:
            raise ValueError(f"record {key}: acq_labels has {k} classes, "
                             f"config.data.num_classes is {num_classes}")
        acq = np.asarray(record["acq_labels"])
        if acq.size != t * k:
            raise ValueError(f"record {key}: acq_labels has {acq.size} values, expected T·K = "
                             f"{t}·{k}")
        return acq.reshape(t, k).astype(np.float32)
    if "labels" not in record:
        _warn_unlabelled(key)
    labels = np.asarray(record.get("labels", []), np.int64).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"record {key}: labels {labels.tolist()} outside [0, {num_classes}) of "
                         f"config.data.num_classes={num_classes} (the record's label set is "
                         f"{record.get('label_set', '?')!r}: set --config.data.num_classes to its "
                         f"class count)")
    hot = np.zeros(num_classes, np.float32)
    hot[labels] = 1.0
    return np.broadcast_to(hot, (t, num_classes)).copy()


def two_view_draws(record: dict, rng: np.random.Generator, cfg: ViewConfig):
    """Every random choice of one SoftCon sample, in a fixed rng order (acquisitions, then view 1's
    parameters, then view 2's) shared by the host and the device rendering paths. Returns
    (image (T,H,W,C_in), BandPlan, ((t1, ViewParams), (t2, ViewParams)), labels (T,K))."""
    image = augment.record_image(record)
    t1, t2 = pick_two(rng, image.shape[0], cfg.distinct_seasons)
    labels = acquisition_labels(record, cfg.num_classes)
    plan = augment.record_band_plan(record, cfg.bands, cfg.norm, cfg.zero_fill_b10)
    c = len(plan.bands_out)
    views = tuple((t, sample_view_params(rng, image.shape[1], image.shape[2], c, cfg, view))
                  for view, t in enumerate((t1, t2)))
    return image, plan, views, labels


def two_view_sample(record: dict, rng: np.random.Generator, cfg: ViewConfig) -> dict:
    """SoftCon sample rendered on the host: acquisitions t1, t2 of one location, each augmented
    independently. Returns view1, view2 (S, S, C) float32 and labels1, labels2 (K,) float32."""
    image, plan, views, labels = two_view_draws(record, rng, cfg)
    out = {}
    for view, (t, params) in enumerate(views, start=1):
        out[f"view{view}"] = augment.render_view(
            image[t], plan, params, cfg.img_size, nodata=cfg.nodata, fill=cfg.nodata_fill,
            jitter_clip=cfg.jitter_clip, solarize_threshold=cfg.solarize_threshold,
            blur_truncate=cfg.blur_truncate)
        out[f"labels{view}"] = labels[t]
    return out


def raw_two_view_sample(record: dict, rng: np.random.Generator, cfg: ViewConfig) -> dict:
    """SoftCon sample for rendering in the step, from the draws ``two_view_sample`` makes:
    raw1, raw2 (R, R, C) stored units (``device_views.prepare_raw``), view_params1, 2
    (PARAMS + 3·C,) float32 (``device_views.pack_params``), labels1, labels2 (K,) float32."""
    image, plan, views, labels = two_view_draws(record, rng, cfg)
    c = len(plan.bands_out)
    out = {}
    for view, (t, params) in enumerate(views, start=1):
        out[f"raw{view}"] = device_views.prepare_raw(
            image[t], plan, params, nodata=cfg.nodata, fill=cfg.nodata_fill,
            raw_size=cfg.raw_size, key=record.get("key", "?"))
        out[f"view_params{view}"] = device_views.pack_params(params, c)
        out[f"labels{view}"] = labels[t]
    return out
