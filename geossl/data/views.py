"""The view kit: what every method's view sampler (``objectives/*_views.py``) shares.

Specs are frozen keyword-only dataclasses that a method's view config inherits, so their fields
are that method's ``config.data`` fields (one name, one default and one check each):

    BandSpec         bands, norm, nodata, nodata_fill, zero_fill_b10: the model input
    CropShape        crop_ratio, flip, vflip: how random resized crops are drawn
    CropSpec         CropShape + img_size, crop_scale: one kind of crop
    PhotometricSpec  a sample's two photometric policies (``augment.Photometric`` each)

Sampler steps: ``pick_one`` / ``pick_two`` / ``pick_acquisitions`` (which acquisitions of a
record), ``acquisition_labels`` (per-acquisition labels), ``CropSpec.draw`` (crop geometry),
``PhotometricSpec.draw_view`` (photometric draws), ``BandSpec.band_plan`` and ``render``.

Configs: ``config_fields(cls, fixed)`` turns a view dataclass's fields into ``config.data``
fields (its defaults; tuples stay tuples; a None default becomes a typed placeholder, which the
command line can set) and ``from_config(cls, config.data, **fixed)`` builds the dataclass back;
``fixed`` fields come from elsewhere (``img_size``: ``config.model.img_size``). So every view field
is settable as ``--config.data.NAME=VALUE`` and each default is written once, in the dataclass.
"""

from __future__ import annotations

import dataclasses
import types
import typing

import numpy as np
from absl import logging
from ml_collections import config_dict

from geossl.data import augment, batch_rows
from geossl.data import bands as bands_lib
from geossl.errors import ConfigError, DataConfigMismatchError

#: How a two-view sample picks its acquisitions (seasons): one for both views, two drawn
#: independently (the same one with probability 1/T), or two different ones when T > 1.
SEASONS = ("same", "independent", "distinct")

#: A per-view value: one for both views, or a pair (view 1, view 2). On the command line a field
#: keeps its config type: a pair field takes ``'(a, b)'`` or one number
#: (``--config.data.blur_p=0.3`` gives (0.3,): both views), a number field one number.
PerView = typing.Union[float, bool, tuple]

#: Record keys of the mixed-sensor sampler (``geossl.data.band_sets``): the bands the record's set
#: renders (they replace the config's ``bands`` in :meth:`BandSpec.band_plan`), and the record of
#: the same location from a second sensor (a cross-sensor pair's second view).
RECORD_BANDS = "_bands"
PAIRED_RECORD = "_paired"


def per_view(value, view: int):
    """The value of view 0 or 1 of a per-view field."""
    if isinstance(value, (tuple, list)):
        return value[0] if len(value) == 1 else value[view]
    return value


def _fail(name: str, expected: str, found) -> typing.NoReturn:
    raise ConfigError(f"config.data.{name}: expected {expected}, found {found!r}")


def check_range(name: str, value) -> None:
    """ConfigError naming config.data.NAME unless ``value`` is (low, high), 0 < low <= high."""
    try:
        ok = isinstance(value, (tuple, list)) and len(value) == 2 and 0 < value[0] <= value[1]
    except TypeError:
        ok = False
    if not ok:
        _fail(name, "a range (low, high) with 0 < low <= high", value)


def check_probability(name: str, value) -> None:
    """ConfigError naming config.data.NAME unless ``value`` is a probability or a pair of them."""
    values = value if isinstance(value, (tuple, list)) else (value,)
    try:
        ok = 1 <= len(values) <= 2 and all(0 <= float(p) <= 1 for p in values)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        _fail(name, "a probability in [0, 1], or one per view (view 1, view 2)", value)


class _Checked:
    """The end of the specs' cooperative ``__post_init__`` chain."""

    def __post_init__(self):
        pass


# ----- specs ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class BandSpec(_Checked):
    """The model input. bands: by name, in this order (a 12-band L2A record gets a zero B10 when
    ``zero_fill_b10``). norm: "softcon" (per band (x − (μ − 2σ)) / 4σ clipped to [0, 1]),
    "meanstd" or "none". nodata / nodata_fill: NaN pixels and those equal to ``nodata`` normalise
    to 0 ("zero") or to the band's mean over the valid pixels ("mean"), ``geossl.data.bands``.
    antialias: the crop's resize averages under a wider triangle where it shrinks, as PIL and
    torchvision's ``antialias=True`` (``augment.antialias_weights``); else cv2's INTER_LINEAR."""

    bands: tuple[str, ...] = bands_lib.S2_L1C
    norm: str = "softcon"
    nodata: float | None = None
    nodata_fill: str = "zero"
    zero_fill_b10: bool = True
    antialias: bool = False

    def __post_init__(self):
        super().__post_init__()
        if not self.bands:
            _fail("bands", "one band name or more", self.bands)
        if self.norm not in bands_lib.NORM_MODES:
            _fail("norm", f"one of {bands_lib.NORM_MODES}", self.norm)
        if self.nodata_fill not in bands_lib.FILL_MODES:
            _fail("nodata_fill", f"one of {bands_lib.FILL_MODES}", self.nodata_fill)

    def band_plan(self, record: dict, bands=None) -> augment.BandPlan:
        """The BandPlan from the record's stored bands to ``bands`` (default: its set's
        :data:`RECORD_BANDS`, else the model's)."""
        bands = bands or record.get(RECORD_BANDS) or self.bands
        return augment.record_band_plan(record, bands, self.norm,
                                        self.zero_fill_b10)

    def render_geometry(self, image: np.ndarray, plan: augment.BandPlan,
                        params: augment.ViewParams, size) -> np.ndarray:
        """(H, W, C_in) stored → (S, S, C) float32 stored units: crop, bands, no-data, resize."""
        return augment.render_geometry(image, plan, params, size, self.nodata, self.nodata_fill,
                                       antialias=self.antialias)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CropShape(_Checked):
    """Random resized crops: aspect ratio w/h log-uniform in ``crop_ratio``; ``flip`` /
    ``vflip``: a horizontal / vertical flip with probability 0.5."""

    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    vflip: bool = False

    def __post_init__(self):
        super().__post_init__()
        check_range("crop_ratio", self.crop_ratio)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CropSpec(CropShape):
    """One kind of crop: area fraction uniform in ``crop_scale`` (torchvision's
    RandomResizedCrop), resized to ``img_size`` × ``img_size``."""

    img_size: int = 224
    crop_scale: tuple[float, float] = (0.08, 1.0)

    def __post_init__(self):
        super().__post_init__()
        check_range("crop_scale", self.crop_scale)
        if not int(self.img_size) > 0:
            _fail("img_size", "a positive size in pixels", self.img_size)

    def draw(self, rng: np.random.Generator, height: int, width: int) -> dict:
        """box (top, left, h, w), hflip, vflip of one crop of an height × width image (rng order:
        the box, then the flips that are on)."""
        return augment.sample_geometry(rng, height, width, self.crop_scale, self.crop_ratio,
                                       0.5 if self.flip else 0.0, 0.5 if self.vflip else 0.0)


_POLICY = augment.Photometric()   # the defaults of every per-view photometric field


@dataclasses.dataclass(frozen=True, kw_only=True)
class PhotometricSpec(_Checked):
    """The photometric policies of a sample's two views (SoftCon, dense: view 1 and view 2; PerA:
    the student and the teacher version of a crop), acting in the band plan's unit domain
    (``bands.unit_coefficients``). Fields marked (per view) take one value or a pair.

    jitter_p (per view): brightness / contrast with factors in [max(0, 1 − a), 1 + a], one for
    all bands unless ``jitter_per_band``; ``rgb_jitter``: torchvision's ColorJitter on R, G, B
    (random order, + saturation / hue) and luma grayscale. jitter_clip: clip to [0, 1] after the
    jitter (bounded domains). gray_p (per view): every band set to the band mean;
    gray_replaces_jitter (per view): PerA's draw, within jitter_p grayscale (p gray_p) instead
    of the jitter. blur_p (per view), blur_sigma (σ range), blur_truncate: Gaussian blur.
    solarize_p (per view), solarize_threshold: x ≥ threshold → 1 − x. channel_drop_p (per view),
    channel_drop_min / _max: SSL4EO-S12's RandomChannelDrop, n ~ U{min..max} distinct bands set
    to 0 in the finished view. Rng order per view: ``augment.sample_photometric``.
    """

    jitter_p: PerView = _POLICY.jitter_p
    brightness: float = _POLICY.brightness
    contrast: float = _POLICY.contrast
    saturation: float = _POLICY.saturation
    hue: float = _POLICY.hue
    jitter_per_band: bool = _POLICY.per_band
    rgb_jitter: bool = _POLICY.rgb
    jitter_clip: bool = True
    gray_p: PerView = _POLICY.gray_p
    gray_replaces_jitter: PerView = _POLICY.gray_replaces_jitter
    blur_p: PerView = (_POLICY.blur_p,) * 2
    blur_sigma: tuple[float, float] = _POLICY.blur_sigma
    blur_truncate: float = 3.0
    solarize_p: PerView = (_POLICY.solarize_p,) * 2
    solarize_threshold: float = 0.5
    channel_drop_p: PerView = _POLICY.channel_drop_p
    channel_drop_min: int = _POLICY.channel_drop_min
    channel_drop_max: int = _POLICY.channel_drop_max

    def __post_init__(self):
        super().__post_init__()
        for name in ("jitter_p", "gray_p", "blur_p", "solarize_p", "channel_drop_p"):
            check_probability(name, getattr(self, name))
        flags = self.gray_replaces_jitter
        if not all(isinstance(f, (bool, np.bool_))
                   for f in (flags if isinstance(flags, (tuple, list)) else (flags,))):
            _fail("gray_replaces_jitter", "True / False, or one per view", flags)
        check_range("blur_sigma", self.blur_sigma)
        if isinstance(self, BandSpec) and max(per_view(self.channel_drop_p, v) for v in (0, 1)) > 0:
            low, high, n = self.channel_drop_min, self.channel_drop_max, len(self.bands)
            if not 0 <= low <= high <= n:
                raise ConfigError(f"config.data.channel_drop_min/max: expected 0 <= min <= max <= "
                                  f"{n} (the model bands), found {low}, {high}")
        policies = tuple(augment.Photometric(
            jitter_p=per_view(self.jitter_p, v), brightness=self.brightness,
            contrast=self.contrast, per_band=self.jitter_per_band, saturation=self.saturation,
            hue=self.hue, rgb=self.rgb_jitter, gray_p=per_view(self.gray_p, v),
            gray_replaces_jitter=bool(per_view(self.gray_replaces_jitter, v)),
            blur_p=per_view(self.blur_p, v), blur_sigma=tuple(self.blur_sigma),
            solarize_p=per_view(self.solarize_p, v),
            channel_drop_p=per_view(self.channel_drop_p, v),
            channel_drop_min=self.channel_drop_min, channel_drop_max=self.channel_drop_max)
            for v in (0, 1))
        object.__setattr__(self, "_policies", policies)

    def photometric(self, view: int) -> augment.Photometric:
        """The photometric policy of view 0 or 1."""
        return self._policies[view]

    def draw_view(self, rng: np.random.Generator, geometry: dict, view: int,
                  channels: int) -> augment.ViewParams:
        """ViewParams of a crop's ``geometry`` (``CropSpec.draw``) plus view 0 or 1's
        photometric draws for ``channels`` model bands."""
        return augment.ViewParams(**geometry, **augment.sample_photometric(
            rng, self._policies[view], channels))

    def render_constants(self) -> dict:
        """The fixed settings of ``augment.render_photometric``."""
        return dict(jitter_clip=self.jitter_clip, solarize_threshold=self.solarize_threshold,
                    blur_truncate=self.blur_truncate)


def render(cfg: BandSpec, image: np.ndarray, plan: augment.BandPlan, params: augment.ViewParams,
           size, into: str | None = None) -> np.ndarray:
    """One finished view (S, S, C) float32 of an (H, W, C_in) acquisition: ``augment.render_view``
    with cfg's no-data policy and, for a PhotometricSpec, its rendering constants. ``into``: the
    sample key the view is returned under; rendered into that key's row of the batch being
    stacked where one is offered (``geossl.data.batch_rows``)."""
    kw = cfg.render_constants() if isinstance(cfg, PhotometricSpec) else {}
    s_h, s_w = augment.pair(size)
    out = batch_rows.claim(into, (s_h, s_w, len(plan.bands_out)), np.float32) if into else None
    return augment.render_view(image, plan, params, size, nodata=cfg.nodata,
                               fill=cfg.nodata_fill, out=out, antialias=cfg.antialias, **kw)


# ----- acquisitions and labels ------------------------------------------------------------------
def pick_one(rng: np.random.Generator, t: int) -> int:
    """One acquisition index of T, uniform."""
    return int(rng.integers(t))


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


def pick_acquisitions(rng: np.random.Generator, t: int, seasons: str) -> tuple[int, int]:
    """The acquisitions of a two-view sample by a ``SEASONS`` policy."""
    if seasons == "same":
        t1 = pick_one(rng, t)
        return t1, t1
    if seasons not in SEASONS:
        _fail("seasons", f"one of {SEASONS}", seasons)
    return pick_two(rng, t, distinct=seasons == "distinct")


_unlabelled_seen = 0


def _warn_unlabelled(key: str) -> None:
    """One warning for the 1st, 10th, 100th, ... record without labels seen by this process."""
    global _unlabelled_seen
    _unlabelled_seen += 1
    n = _unlabelled_seen
    if n == 10 ** (len(str(n)) - 1):
        logging.warning("record %s has no 'labels' or 'acq_labels' feature: it trains with an "
                        "empty label set (no label term); %d such record(s) so far in this "
                        "process", key, n)


def acquisition_labels(record: dict, num_classes: int) -> np.ndarray:
    """(T, K) float32 multi-hot per acquisition: ``acq_labels`` (T·K) when present, else the
    record's ``labels`` indices for every acquisition."""
    t = record["image"].shape[0]
    key = record.get("key", "?")
    if "acq_labels" in record:
        k = int(np.asarray(record.get("num_classes", [num_classes])).reshape(-1)[0])
        if k != num_classes:
            raise DataConfigMismatchError(f"record {key}: acq_labels has {k} classes, "
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
        raise DataConfigMismatchError(
            f"record {key}: labels {labels.tolist()} outside [0, {num_classes}) of "
            f"config.data.num_classes={num_classes} (the record's label set is "
            f"{record.get('label_set', '?')!r}: set --config.data.num_classes to its class count)")
    hot = np.zeros(num_classes, np.float32)
    hot[labels] = 1.0
    return np.broadcast_to(hot, (t, num_classes)).copy()


# ----- configs ----------------------------------------------------------------------------------
def _placeholder_type(cls, name: str) -> type:
    """The non-None type of an ``X | None`` field, for an ml_collections placeholder."""
    hint = typing.get_type_hints(cls)[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


def config_fields(cls, fixed=()) -> dict:
    """``config.data`` fields of a view dataclass: every field not in ``fixed``, at its default
    (tuples stay tuples; None → an ml_collections placeholder of the field's type, so that
    ``--config.data.NAME=VALUE`` can set it). Use: ``c.data.update(config_fields(...))``."""
    out = {}
    for field in dataclasses.fields(cls):
        if field.name in fixed or not field.init:
            continue
        if field.default is dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{field.name}: a config field needs a default")
        value = field.default
        out[field.name] = (config_dict.placeholder(_placeholder_type(cls, field.name))
                           if value is None else value)
    return out


def from_config(cls, section, **fixed):
    """``cls(**fixed, **fields)``, each other field of ``cls`` taken from ``section`` (e.g.
    ``config.data``) where set there (lists become tuples), else the dataclass default."""
    kw = dict(fixed)
    for field in dataclasses.fields(cls):
        if field.init and field.name not in fixed and field.name in section:
            value = section[field.name]
            kw[field.name] = tuple(value) if isinstance(value, (list, tuple)) else value
    return cls(**kw)
