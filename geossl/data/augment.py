"""Multispectral view construction in numpy, deterministic given a ``np.random.Generator``.

Images are (H, W, C), C bands named by a ``bands`` list. The building blocks follow torchvision:
``random_resized_crop_box`` is ``RandomResizedCrop.get_params``; ``crop_and_resize`` is the bilinear
resize of tensors (align_corners=False, no antialiasing). Photometric operations act on normalised
data (softcon: [0, 1]) in the SSL4EO-S12 style: one brightness factor, a contrast factor around each
band's mean, grayscale = the mean over bands, Gaussian blur with reflected borders.

The per-view path (``render_view``) fuses these steps: it clips the crop box in stored units,
resizes, then applies normalisation and brightness/contrast as one per-band affine map. This equals
normalise → crop/resize → jitter → grayscale → blur → solarize → flip (tests check it) because the
normalisation after its clip is affine per band and bilinear weights sum to one; flips are applied
by reversing the resize taps (the later steps are mirror symmetric).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import Sequence

import numpy as np

from geossl.data import bands as bands_lib

try:
    from threadpoolctl import ThreadpoolController
except ImportError:  # optional: without it BLAS keeps its own thread count
    ThreadpoolController = None
_BLAS = []

Box = tuple[int, int, int, int]  # top, left, height, width


# ----- geometry ---------------------------------------------------------------------------------
def random_resized_crop_box(rng: np.random.Generator, height: int, width: int,
                            scale: Sequence[float] = (0.08, 1.0),
                            ratio: Sequence[float] = (3 / 4, 4 / 3)) -> Box:
    """(top, left, h, w) of a crop whose area fraction is U(scale) and aspect log-U(ratio); 10
    tries, then the centre crop of the closest admissible aspect (torchvision semantics)."""
    if not (0 < scale[0] <= scale[1]) or not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"random_resized_crop_box: expected 0 < min <= max for scale and ratio, "
                         f"found scale={tuple(scale)}, ratio={tuple(ratio)}")
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def resize_taps(size: int, out: int, flip: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps for resizing ``size`` samples to ``out`` (align_corners=False, no antialias):
    output j = x[i0[j]] + frac[j]·(x[i1[j]] − x[i0[j]]); ``flip`` reverses the output order."""
    src = (np.arange(out, dtype=np.float64) + 0.5) * (size / out) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(src.astype(np.int64), size - 1)
    i1 = np.minimum(i0 + 1, size - 1)
    frac = (src - i0).astype(np.float32)
    if flip:
        return i0[::-1].copy(), i1[::-1].copy(), frac[::-1].copy()
    return i0, i1, frac


def _lerp_rows(x: np.ndarray, out: int, flip: bool) -> np.ndarray:
    """(h, w, C) float32 → (out, w, C) along axis 0."""
    if x.shape[0] == out and not flip:
        return x
    i0, i1, frac = resize_taps(x.shape[0], out, flip)
    a = np.take(x, i0, axis=0)
    b = np.take(x, i1, axis=0)
    b -= a
    b *= frac[:, None, None]
    b += a
    return b


def _lerp_cols(x: np.ndarray, out: int, flip: bool) -> np.ndarray:
    """(h, w, C) float32 → (h, out, C) along axis 1 (per-column weights repeated over C so the
    arithmetic runs on contiguous (h, out·C) rows)."""
    h, w, c = x.shape
    if w == out and not flip:
        return x
    i0, i1, frac = resize_taps(w, out, flip)
    a = np.take(x, i0, axis=1).reshape(h, out * c)
    b = np.take(x, i1, axis=1).reshape(h, out * c)
    b -= a
    b *= np.repeat(frac, c)
    b += a
    return b.reshape(h, out, c)


def _pair(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def crop_and_resize(image: np.ndarray, box: Box, out_size, *, hflip: bool = False,
                    vflip: bool = False, pointwise=None) -> np.ndarray:
    """(H, W, C) any dtype → (S, S, C) float32 (``out_size`` an int or (S_h, S_w)): bilinear resize
    of ``image[top:top+h, left:left+w]``, then optional flips. ``pointwise`` ((h, w, C) float32 →
    same) is applied to the crop before interpolating (e.g. a clipping normalisation)."""
    if image.ndim != 3:
        raise ValueError(f"crop_and_resize: expected an image (H, W, C), found shape {image.shape}")
    top, left, h, w = box
    if not (0 <= top and 0 <= left and 0 < h and 0 < w and top + h <= image.shape[0]
            and left + w <= image.shape[1]):
        raise ValueError(f"crop_and_resize: box {box} outside the image {image.shape[:2]}")
    out_h, out_w = _pair(out_size)
    x = image[top:top + h, left:left + w].astype(np.float32)
    if pointwise is not None:
        x = np.asarray(pointwise(x), np.float32)
    return np.ascontiguousarray(_lerp_cols(_lerp_rows(x, out_h, vflip), out_w, hflip))


def hflip(x: np.ndarray) -> np.ndarray:
    """(H, W, C) mirrored left ↔ right."""
    return np.ascontiguousarray(x[:, ::-1])


def vflip(x: np.ndarray) -> np.ndarray:
    """(H, W, C) mirrored top ↔ bottom."""
    return np.ascontiguousarray(x[::-1])


# ----- photometric (reference forms, on normalised (H, W, C) float32) -------------------------
def brightness_contrast(x: np.ndarray, brightness_factor, contrast_factor,
                        clip: bool = True) -> np.ndarray:
    """SSL4EO-S12 jitter: y = x·b, then (y − mean_c(y))·c + mean_c(y) with per-band spatial means;
    b, c scalars or (C,) per-band factors; optionally clipped to [0, 1]."""
    y = x.astype(np.float32) * np.asarray(brightness_factor, np.float32)
    mean = y.mean(axis=(0, 1), keepdims=True)
    y = (y - mean) * np.asarray(contrast_factor, np.float32) + mean
    return np.clip(y, 0.0, 1.0) if clip else y


def grayscale(x: np.ndarray) -> np.ndarray:
    """(H, W, C) → (H, W, C): every band replaced by the mean over bands."""
    return np.broadcast_to(x.mean(axis=-1, keepdims=True, dtype=np.float32), x.shape).copy()


def solarize(x: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """x ≥ threshold → 1 − x (for [0, 1] data, as torchvision on float tensors)."""
    return np.where(x >= threshold, np.float32(1) - x, x).astype(np.float32)


def gaussian_kernel(sigma: float, truncate: float = 3.0) -> np.ndarray:
    """(2r+1,) float64 normalised Gaussian, r = int(truncate·σ + 0.5) (scipy's radius)."""
    r = int(truncate * float(sigma) + 0.5)
    t = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
    """Indices mirrored into [0, n) with the half-sample symmetric rule "dcba|abcd|dcba"."""
    q = np.mod(index, 2 * n)
    return np.where(q >= n, 2 * n - 1 - q, q)


def blur_matrix(n: int, kernel: np.ndarray) -> np.ndarray:
    """(n, n) float32 banded matrix of a symmetric 1-D correlation with reflected borders."""
    r = len(kernel) // 2
    m = np.zeros((n, n), np.float64)
    rows = np.arange(n)
    for j in range(-r, r + 1):
        m[rows, _reflect(rows + j, n)] += kernel[j + r]   # (row, col) pairs unique for fixed j
    return m.astype(np.float32)


def _one_blas_thread():
    """Context running BLAS on the calling thread only: the blur's GEMMs are small, and spinning
    BLAS threads would compete with the input pipeline's own workers."""
    if ThreadpoolController is None:
        return contextlib.nullcontext()
    if not _BLAS:
        _BLAS.append(ThreadpoolController())
    return _BLAS[0].limit(limits=1, user_api="blas")


def _banded_matmul(m: np.ndarray, x: np.ndarray, radius: int, block: int = 32) -> np.ndarray:
    """m (n, n) with m[i, j] = 0 for |i − j| > radius, times x (n, k) → (n, k) float32: one small
    GEMM per block of output rows over the input rows the band reaches."""
    n = m.shape[0]
    if radius >= n:
        return m @ x
    out = np.empty(x.shape, np.float32)
    for i in range(0, n, block):
        a, b = max(0, i - radius), min(n, i + block + radius)
        np.matmul(m[i:i + block, a:b], x[a:b], out=out[i:i + block])
    return out


def gaussian_blur(x: np.ndarray, sigma: float, truncate: float = 3.0) -> np.ndarray:
    """(H, W, C) float → float32 blurred over H and W (separable, reflected borders "dcba|abcd",
    radius int(truncate·σ + 0.5) as scipy); channels independent. Each axis is a banded matrix
    product on one BLAS thread, W after swapping it to the front."""
    k = gaussian_kernel(sigma, truncate)
    r = len(k) // 2
    x = np.asarray(x, np.float32)
    h, w, c = x.shape
    if r == 0:
        return x.copy()
    with _one_blas_thread():
        y = _banded_matmul(blur_matrix(h, k), x.reshape(h, w * c), r).reshape(h, w, c)
        y = np.ascontiguousarray(y.transpose(1, 0, 2)).reshape(w, h * c)
        y = _banded_matmul(blur_matrix(w, k), y, r).reshape(w, h, c)
    return np.ascontiguousarray(y.transpose(1, 0, 2))


# ----- per-view parameters ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Photometric:
    """Random photometric policy of one view (probabilities and ranges)."""

    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    per_band: bool = False          # independent factors per band (default: one factor, SSL4EO)
    gray_p: float = 0.2
    gray_replaces_jitter: bool = False  # PerA: within jitter_p, gray (p=gray_p) instead of jitter
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0


@dataclasses.dataclass(frozen=True)
class ViewParams:
    """Drawn parameters of one view. brightness/contrast: None (no jitter), a float or (C,)."""

    box: Box
    hflip: bool = False
    vflip: bool = False
    brightness: float | np.ndarray | None = None
    contrast: float | np.ndarray | None = None
    gray: bool = False
    blur_sigma: float | None = None
    solarize: bool = False


def _factor(rng: np.random.Generator, amount: float, channels: int, per_band: bool):
    lo, hi = max(0.0, 1.0 - amount), 1.0 + amount
    return rng.uniform(lo, hi, size=channels) if per_band else float(rng.uniform(lo, hi))


def sample_photometric(rng: np.random.Generator, policy: Photometric, channels: int) -> dict:
    """Draws the photometric fields of a ViewParams (order: jitter, gray, blur, solarize)."""
    out = dict(brightness=None, contrast=None, gray=False, blur_sigma=None, solarize=False)
    if rng.random() < policy.jitter_p:
        if policy.gray_replaces_jitter and rng.random() < policy.gray_p:
            out["gray"] = True
        else:
            out["brightness"] = _factor(rng, policy.brightness, channels, policy.per_band)
            out["contrast"] = _factor(rng, policy.contrast, channels, policy.per_band)
    if not policy.gray_replaces_jitter and rng.random() < policy.gray_p:
        out["gray"] = True
    if rng.random() < policy.blur_p:
        out["blur_sigma"] = float(rng.uniform(*policy.blur_sigma))
    if rng.random() < policy.solarize_p:
        out["solarize"] = True
    return out


def sample_geometry(rng: np.random.Generator, height: int, width: int, scale, ratio,
                    hflip_p: float = 0.5, vflip_p: float = 0.0) -> dict:
    """Draws box, hflip and vflip of a ViewParams."""
    box = random_resized_crop_box(rng, height, width, scale, ratio)
    h = bool(hflip_p > 0 and rng.random() < hflip_p)
    v = bool(vflip_p > 0 and rng.random() < vflip_p)
    return dict(box=box, hflip=h, vflip=v)


# ----- fused rendering --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BandPlan:
    """Precomputed mapping from stored bands to normalised model bands."""

    bands_out: tuple[str, ...]
    index: tuple[int, ...] | None        # None: identity; -1: zero-filled band
    scale: np.ndarray                    # (C,) normalised = x·scale + offset
    offset: np.ndarray
    bounds: tuple[np.ndarray, np.ndarray] | None  # stored-unit clip (softcon)
    norm: str


@functools.lru_cache(maxsize=128)
def band_plan(bands_in: tuple[str, ...], bands_out: tuple[str, ...], norm: str,
              zero_fill: tuple[str, ...] = bands_lib.ZERO_FILL) -> BandPlan:
    """The cached BandPlan of one (stored bands, model bands, normalisation) combination."""
    idx = bands_lib.band_indices(bands_in, bands_out, "band_plan", zero_fill)
    scale, offset = bands_lib.norm_coefficients(bands_out, norm)
    index = None if idx == list(range(len(bands_in))) else tuple(idx)
    return BandPlan(tuple(bands_out), index, scale, offset,
                    bands_lib.raw_clip_bounds(bands_out, norm), norm)


def _select(x: np.ndarray, index) -> np.ndarray:
    if index is None:
        return x
    if min(index) >= 0:
        return np.take(x, index, axis=-1)
    out = np.zeros(x.shape[:-1] + (len(index),), x.dtype)
    for j, i in enumerate(index):
        if i >= 0:
            out[..., j] = x[..., i]
    return out


def fill_invalid(region: np.ndarray, mask: np.ndarray, plan: BandPlan, fill: str) -> None:
    """Sets the ``mask`` pixels of the float32 ``region`` (stored units, in place) to the values
    that normalise to the ``fill`` policy of ``geossl.data.bands``."""
    values = bands_lib.fill_values(region, mask, fill, plan.scale, plan.offset)
    np.copyto(region, np.broadcast_to(values, region.shape), where=mask)


def render_geometry(image: np.ndarray, plan: BandPlan, params: ViewParams, out_size,
                    nodata: float | None = None, fill: str = "zero") -> np.ndarray:
    """(H, W, C_in) stored → (S, S, C) float32 in stored units: crop box, band selection, no-data
    fill, softcon clip, bilinear resize and flips. ``render_photometric`` finishes the view."""
    top, left, h, w = params.box
    region = _select(image[top:top + h, left:left + w], plan.index)
    c = region.shape[-1]
    mask = bands_lib.invalid_mask(region, nodata)
    if mask is not None:
        region = region.astype(np.float32)
        fill_invalid(region, mask, plan, fill)
    if plan.bounds is None:
        x = region.astype(np.float32, copy=mask is None)
    else:   # the float32 conversion happens inside the first bound (one pass)
        x = np.empty((h, w, c), np.float32)
        flat = x.reshape(h, w * c)
        np.maximum(region.reshape(h, w * c), np.tile(plan.bounds[0], w), out=flat)
        np.minimum(flat, np.tile(plan.bounds[1], w), out=flat)
    out_h, out_w = _pair(out_size)
    return _lerp_cols(_lerp_rows(x, out_h, params.vflip), out_w, params.hflip)


def render_photometric(x: np.ndarray, plan: BandPlan, params: ViewParams, *,
                       jitter_clip: bool = True, solarize_threshold: float = 0.5,
                       blur_truncate: float = 3.0) -> np.ndarray:
    """(S, S, C) float32 from ``render_geometry`` (overwritten) → the finished view (S, S, C):
    normalisation and jitter as one per-band affine map, then grayscale, blur, solarize."""
    s_h, s_w, c = x.shape
    scale = plan.scale.astype(np.float64)
    offset = plan.offset.astype(np.float64)
    jitter = params.brightness is not None
    if jitter:
        b = np.asarray(params.brightness, np.float64)
        k = np.asarray(params.contrast, np.float64)
        band_mean = x.reshape(s_h, s_w * c).sum(axis=0).reshape(s_w, c).sum(axis=0, dtype=np.float64)
        mean_n = scale * band_mean / (s_h * s_w) + offset
        gain, bias = k * b * scale, k * b * offset + (1 - k) * b * mean_n
    else:
        gain, bias = scale, offset
    flat = x.reshape(s_h, s_w * c)
    flat *= np.tile(gain.astype(np.float32), s_w)
    flat += np.tile(bias.astype(np.float32), s_w)
    if jitter and jitter_clip:
        np.clip(x, 0.0, 1.0, out=x)
    if params.gray:   # einsum: a fast reduction over the short band axis
        x = np.einsum("ijk->ij", x)[..., None]
        x *= np.float32(1 / c)
    if params.blur_sigma is not None:
        x = gaussian_blur(x, params.blur_sigma, blur_truncate)
    if params.solarize:
        np.subtract(np.float32(1), x, out=x, where=x >= solarize_threshold)
    if params.gray:
        x = np.broadcast_to(x, (s_h, s_w, c)).copy()
    return x


def render_view(image: np.ndarray, plan: BandPlan, params: ViewParams, out_size, *,
                nodata: float | None = None, fill: str = "zero", **photometric_kw) -> np.ndarray:
    """One view (S, S, C) float32 of an (H, W, C_in) stored image."""
    x = render_geometry(image, plan, params, out_size, nodata, fill)
    return render_photometric(x, plan, params, **photometric_kw)


# ----- labels -----------------------------------------------------------------------------------
def acquisition_labels(record: dict, num_classes: int) -> np.ndarray:
    """(T, K) float32 multi-hot per acquisition: ``acq_labels`` (T·K) when present, else the
    record's ``labels`` indices for every acquisition."""
    t = record["image"].shape[0]
    key = record.get("key", "?")
    if "acq_labels" in record:
        k = int(np.asarray(record.get("num_classes", [num_classes])).reshape(-1)[0])
        if k != num_classes:
            raise ValueError(f"record {key}: acq_labels has {k} classes, the config expects "
                             f"num_classes={num_classes}")
        acq = np.asarray(record["acq_labels"])
        if acq.size != t * k:
            raise ValueError(f"record {key}: acq_labels has {acq.size} values, expected T·K = "
                             f"{t}·{k}")
        return acq.reshape(t, k).astype(np.float32)
    labels = np.asarray(record.get("labels", []), np.int64).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"record {key}: labels {labels.tolist()} outside [0, {num_classes})")
    hot = np.zeros(num_classes, np.float32)
    hot[labels] = 1.0
    return np.broadcast_to(hot, (t, num_classes)).copy()


def _image(record: dict) -> np.ndarray:
    image = np.asarray(record["image"])
    if image.ndim != 4:
        raise ValueError(f"record {record.get('key', '?')}: expected image (T, H, W, C), found "
                         f"shape {image.shape}")
    return image


def _plan_for(record: dict, cfg) -> BandPlan:
    zero_fill = bands_lib.ZERO_FILL if cfg.zero_fill_b10 else ()
    return band_plan(tuple(record["bands"]), tuple(cfg.bands), cfg.norm, zero_fill)


# ----- SoftCon: two seasons, two views ----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ViewConfig:
    """SoftCon / SSL4EO-S12 MoCo-v3 views (REFERENCE §1): two acquisitions, each augmented.

    bands: model input bands (a 12-band L2A record gets a zero B10 when ``zero_fill_b10``).
    norm: "softcon" | "meanstd" | "none"; nodata / nodata_fill: see ``geossl.data.bands``.
    blur_p, solarize_p: per view (view 1, view 2).
    raw_size: device-side views only (``geossl.data.device_views``): acquisitions are zero-padded
    to raw_size × raw_size so that records of different sizes batch together (0: unpadded).
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
    nodata: float | None = None
    nodata_fill: str = "zero"
    zero_fill_b10: bool = True
    raw_size: int = 0

    def photometric(self, view: int) -> Photometric:
        return Photometric(jitter_p=self.jitter_p, brightness=self.brightness,
                           contrast=self.contrast, per_band=self.jitter_per_band,
                           gray_p=self.gray_p, blur_p=self.blur_p[view],
                           blur_sigma=tuple(self.blur_sigma), solarize_p=self.solarize_p[view])


def sample_view_params(rng: np.random.Generator, height: int, width: int, channels: int,
                       cfg: ViewConfig, view: int) -> ViewParams:
    """Draws one view's parameters (geometry, then photometric)."""
    geo = sample_geometry(rng, height, width, cfg.crop_scale, cfg.crop_ratio,
                          0.5 if cfg.flip else 0.0, 0.5 if cfg.vflip else 0.0)
    return ViewParams(**geo, **sample_photometric(rng, cfg.photometric(view), channels))


def _render_configured(image: np.ndarray, plan: BandPlan, params: ViewParams,
                       cfg: ViewConfig) -> np.ndarray:
    return render_view(image, plan, params, cfg.img_size, nodata=cfg.nodata, fill=cfg.nodata_fill,
                       jitter_clip=cfg.jitter_clip, solarize_threshold=cfg.solarize_threshold,
                       blur_truncate=cfg.blur_truncate)


def augment_view(image: np.ndarray, image_bands: Sequence[str], rng: np.random.Generator,
                 cfg: ViewConfig, view: int = 0) -> np.ndarray:
    """One acquisition (H, W, C_in) → an augmented, normalised view (S, S, len(cfg.bands))."""
    zero_fill = bands_lib.ZERO_FILL if cfg.zero_fill_b10 else ()
    plan = band_plan(tuple(image_bands), tuple(cfg.bands), cfg.norm, zero_fill)
    params = sample_view_params(rng, image.shape[0], image.shape[1], len(cfg.bands), cfg, view)
    return _render_configured(image, plan, params, cfg)


def pick_two(rng: np.random.Generator, t: int) -> tuple[int, int]:
    """Two different acquisition indices of T (the same one twice when T == 1)."""
    t1 = int(rng.integers(t))
    t2 = t1 if t == 1 else (t1 + 1 + int(rng.integers(t - 1))) % t
    return t1, t2


def two_view_draws(record: dict, rng: np.random.Generator, cfg: ViewConfig):
    """Every random choice of one SoftCon sample, in a fixed rng order (acquisitions, then view 1's
    parameters, then view 2's) shared by the host and the device rendering paths. Returns
    (image (T,H,W,C_in), BandPlan, ((t1, ViewParams), (t2, ViewParams)), labels (T,K))."""
    image = _image(record)
    t1, t2 = pick_two(rng, image.shape[0])
    labels = acquisition_labels(record, cfg.num_classes)
    plan = _plan_for(record, cfg)
    c = len(plan.bands_out)
    views = tuple((t, sample_view_params(rng, image.shape[1], image.shape[2], c, cfg, view))
                  for view, t in enumerate((t1, t2)))
    return image, plan, views, labels


def two_view_sample(record: dict, rng: np.random.Generator, cfg: ViewConfig) -> dict:
    """SoftCon sample: acquisitions t1 ≠ t2 of one location, each augmented independently.
    Returns view1, view2 (S, S, C) float32 and labels1, labels2 (K,) float32 multi-hot."""
    image, plan, views, labels = two_view_draws(record, rng, cfg)
    out = {}
    for view, (t, params) in enumerate(views, start=1):
        out[f"view{view}"] = _render_configured(image[t], plan, params, cfg)
        out[f"labels{view}"] = labels[t]
    return out


# ----- PerA: aligned pairs ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MultiCropConfig:
    """PerA views (REFERENCE §3): per crop one shared geometry (box, h/v flips) and two
    photometric versions, student (jitter p=0.8, gray instead of jitter p=0.1) and teacher
    (jitter p=0.1). ``num_global`` pairs at ``global_size``, ``num_local`` at ``local_size``."""

    global_size: int = 224
    local_size: int = 96
    num_global: int = 2
    num_local: int = 8
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    student: Photometric = Photometric(jitter_p=0.8, gray_p=0.1, gray_replaces_jitter=True)
    teacher: Photometric = Photometric(jitter_p=0.1, gray_p=0.0)
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
    image = _image(record)
    x = image[int(rng.integers(image.shape[0]))]
    plan = _plan_for(record, cfg)
    c = len(plan.bands_out)
    out = {}
    for name, n, size, scale in (("global", cfg.num_global, cfg.global_size, cfg.global_scale),
                                 ("local", cfg.num_local, cfg.local_size, cfg.local_scale)):
        student = np.empty((n, size, size, c), np.float32)
        teacher = np.empty((n, size, size, c), np.float32)
        for i in range(n):
            geo = sample_geometry(rng, x.shape[0], x.shape[1], scale, cfg.crop_ratio,
                                  0.5 if cfg.hflip else 0.0, 0.5 if cfg.vflip else 0.0)
            raw = render_geometry(x, plan, ViewParams(**geo), size, cfg.nodata, cfg.nodata_fill)
            for dst, policy, src in ((student, cfg.student, raw.copy()), (teacher, cfg.teacher, raw)):
                params = ViewParams(**geo, **sample_photometric(rng, policy, c))
                dst[i] = render_photometric(src, plan, params, jitter_clip=cfg.jitter_clip)
        out[f"{name}_student"], out[f"{name}_teacher"] = student, teacher
    return out


# ----- GFM: one crop ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MaskedCropConfig:
    """GFM views (REFERENCE §4): RandomResizedCrop(img_size, scale 0.67–1) + horizontal flip,
    normalised, no photometric change; masks are drawn on the device. With ``teacher_size`` the
    same crop is also rendered at the teacher's size (and ``teacher_bands``, default ``bands``)."""

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
    image = _image(record)
    x = image[int(rng.integers(image.shape[0]))]
    plan = _plan_for(record, cfg)
    params = ViewParams(**sample_geometry(rng, x.shape[0], x.shape[1], cfg.crop_scale,
                                          cfg.crop_ratio, 0.5 if cfg.flip else 0.0))
    out = {"image": render_view(x, plan, params, cfg.img_size, nodata=cfg.nodata,
                                fill=cfg.nodata_fill)}
    if cfg.teacher_size:
        zero_fill = bands_lib.ZERO_FILL if cfg.zero_fill_b10 else ()
        t_plan = band_plan(tuple(record["bands"]), tuple(cfg.teacher_bands or cfg.bands),
                           cfg.norm, zero_fill)
        out["teacher_image"] = render_view(x, t_plan, params, cfg.teacher_size,
                                           nodata=cfg.nodata, fill=cfg.nodata_fill)
    return out
