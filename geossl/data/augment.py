"""Multispectral view kernels in numpy, deterministic given a ``np.random.Generator``.

Images are (H, W, C), C bands named by a ``bands`` list. ``random_resized_crop_box`` is
torchvision's ``RandomResizedCrop.get_params``; the resize is the bilinear resize of tensors
(align_corners=False; antialiased as PIL's where asked). Photometric operations act in each band
plan's unit domain (``bands.unit_coefficients``: softcon's normalised [0, 1], x / 255 for 8-bit
R, G, B, else the normalised values) in the SSL4EO-S12 style: one brightness factor, a contrast factor around
each band's mean, grayscale = the mean over bands, Gaussian blur with mirrored borders
(``geossl.data.blur``), solarize, and a channel drop (chosen bands set to 0 in the finished view,
as SSL4EO-S12's ``RandomChannelDrop``). ``Photometric.rgb`` switches the jitter and grayscale of
R, G, B views to torchvision's ``ColorJitter`` / ``RandomGrayscale`` (``geossl.data.colour``:
random order, luma-based contrast, saturation, hue) followed by the normalisation.

``render_view`` fuses the steps of one view: it clips the crop box in stored units, resizes, then
applies normalisation and brightness/contrast as one per-band affine map. This equals
normalise → crop/resize → jitter → grayscale → blur → solarize → channel drop → flip (tests
check it) because the normalisation after its clip is affine per band and bilinear weights sum to
one; flips reverse the resize taps (the later steps are mirror symmetric). ``render_class_map``
moves a per-pixel class map through the same box and flips, nearest neighbour.

These are the kernels; the specs and sampler steps the methods share (bands, crops, photometric
policies as config dataclasses; acquisitions, labels, rendering) are the view kit,
``geossl.data.views``. Which acquisitions a sample uses and how many views it has belong to each
method: its sampler lives beside its loss (``objectives/*_views.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import numpy as np

from geossl.data import bands as bands_lib
from geossl.data import blur, colour
from geossl.data.blur import gaussian_blur

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


def antialias_weights(size: int, out: int, flip: bool = False) -> np.ndarray:
    """(out, size) float32 rows of an antialiased bilinear resize (PIL's BILINEAR, torch's
    ``interpolate(antialias=True)``): output j averages the samples i under a triangle of
    half-width s = max(size/out, 1) centred at (j + 0.5)·size/out, weights 1 − |i + 0.5 − c|/s,
    normalised; the same as plain bilinear where out >= size. ``flip`` reverses the rows."""
    scale = size / out
    support = max(scale, 1.0)
    centre = (np.arange(out, dtype=np.float64)[:, None] + 0.5) * scale
    taps = np.arange(size, dtype=np.float64)[None, :] + 0.5
    w = np.maximum(0.0, 1.0 - np.abs(taps - centre) / support)
    w /= w.sum(axis=1, keepdims=True)
    return (w[::-1] if flip else w).astype(np.float32)


def antialias_taps(size: int, out: int, flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """:func:`antialias_weights` as K taps a row: sample indices (out, K) and weights (out, K)
    float32, zero-weighted where a row has fewer than K."""
    w = antialias_weights(size, out, flip)
    nonzero = w > 0
    first = nonzero.argmax(axis=1)
    k = int((size - nonzero[:, ::-1].argmax(axis=1) - first).max())
    idx = np.minimum(first[:, None] + np.arange(k)[None, :], size - 1)
    return idx, np.take_along_axis(w, idx, axis=1) * (first[:, None] + np.arange(k) < size)


def _antialias_axis(x: np.ndarray, out: int, flip: bool, axis: int) -> np.ndarray:
    """``x`` resized to ``out`` along ``axis`` (0 or 1 of (h, w, C)): the K-tap weighted sum of
    gathered rows / columns of :func:`antialias_taps`."""
    idx, wt = antialias_taps(x.shape[axis], out, flip)
    shape = list(x.shape)
    shape[axis] = out
    # each tap scales contiguous (rows, ·) planes: a weight per row along axis 0; along axis 1 a
    # weight per column, repeated over the C bands (a broadcast over C runs ~10% slower)
    per_tap = wt.T[:, :, None] if axis == 0 else np.repeat(wt.T, x.shape[2], axis=1)[:, None, :]
    y = np.take(x, idx[:, 0], axis=axis).reshape(shape[0], -1) * per_tap[0]
    for k in range(1, idx.shape[1]):
        y += np.take(x, idx[:, k], axis=axis).reshape(shape[0], -1) * per_tap[k]
    return y.reshape(shape)


def _resize_antialiased(x: np.ndarray, out_h: int, out_w: int, vflip: bool,
                        hflip: bool) -> np.ndarray:
    """(h, w, C) → (out_h, out_w, C): rows, then columns (:func:`_antialias_axis`)."""
    return _antialias_axis(_antialias_axis(x, out_h, vflip, 0), out_w, hflip, 1)


def resize_bilinear(x: np.ndarray, out_h: int, out_w: int, vflip: bool = False,
                    hflip: bool = False, out: np.ndarray | None = None,
                    antialias: bool = False) -> np.ndarray:
    """(h, w, C) float32 → (out_h, out_w, C): bilinear, align_corners=False, then the flips;
    written into ``out`` when given (and returned). Without ``antialias``: OpenCV's ``resize``
    (INTER_LINEAR: the same taps and border clamp) when installed, else two passes of numpy
    gathers (``_lerp_rows``, ``_lerp_cols``); they agree to float32 rounding of the weights
    (tests: both against torch's ``interpolate``). ``antialias`` (a downscaled axis averages
    under a wider triangle, as PIL and torchvision's ``antialias=True``): K gathered taps an
    axis (:func:`antialias_taps`)."""
    h, w, c = x.shape
    if antialias and (h > out_h or w > out_w):
        return blur.write_into(_resize_antialiased(x, out_h, out_w, vflip, hflip), out)
    if blur.cv2 is None or c > 512 or (h, w) == (out_h, out_w):
        return blur.write_into(_lerp_cols(_lerp_rows(x, out_h, vflip), out_w, hflip), out)
    flipped = vflip or hflip
    y = blur.cv2.resize(x, (out_w, out_h), dst=None if flipped else out,
                        interpolation=blur.cv2.INTER_LINEAR)
    y = y.reshape(out_h, out_w, c)
    if flipped:
        y = y[::-1 if vflip else 1, ::-1 if hflip else 1]
        return np.ascontiguousarray(y) if out is None else blur.write_into(y, out)
    return blur.write_into(y, out)


def pair(size) -> tuple[int, int]:
    """An output size: S or (height, width) → (height, width)."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


# ----- per-view parameters ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Photometric:
    """Random photometric policy of one view (probabilities and ranges)."""

    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    per_band: bool = False          # independent factors per band (default: one factor, SSL4EO)
    saturation: float = 0.0         # rgb only: saturation factor in [1 - s, 1 + s]
    hue: float = 0.0                # rgb only: hue shift in [-h, h] turns
    rgb: bool = False               # torchvision ColorJitter + luma grayscale on R, G, B views

    def __post_init__(self):
        if self.rgb and self.per_band:
            raise ValueError("RGB colour jitter (torchvision ColorJitter, config.data.rgb_jitter) "
                             "draws one factor per view; expected per_band "
                             "(config.data.jitter_per_band) False, found True")
    gray_p: float = 0.2
    gray_replaces_jitter: bool = False  # PerA: within jitter_p, gray (p=gray_p) instead of jitter
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    channel_drop_p: float = 0.0     # RandomChannelDrop: probability of zeroing some bands
    channel_drop_min: int = 1       # number of bands zeroed: uniform in [min, max]
    channel_drop_max: int = 6


@dataclasses.dataclass(frozen=True)
class ViewParams:
    """Drawn parameters of one view. brightness/contrast: None (no jitter), a float or (C,);
    saturation / hue / jitter_order: set for ``Photometric.rgb`` views (torchvision's ColorJitter
    draws); dropped: indices of the model bands set to 0 in the finished view."""

    box: Box
    hflip: bool = False
    vflip: bool = False
    brightness: float | np.ndarray | None = None
    contrast: float | np.ndarray | None = None
    gray: bool = False
    blur_sigma: float | None = None
    solarize: bool = False
    dropped: tuple[int, ...] = ()
    saturation: float | None = None
    hue: float | None = None
    jitter_order: tuple[int, ...] | None = None
    rgb: bool = False


def _factor(rng: np.random.Generator, amount: float, channels: int, per_band: bool):
    lo, hi = max(0.0, 1.0 - amount), 1.0 + amount
    return rng.uniform(lo, hi, size=channels) if per_band else float(rng.uniform(lo, hi))


def sample_dropped_bands(rng: np.random.Generator, channels: int, low: int,
                         high: int) -> tuple[int, ...]:
    """Sorted indices of n distinct bands of ``channels``, n uniform in [low, high] (SSL4EO-S12's
    RandomChannelDrop: ``random.randint(min, max)`` bands chosen without replacement)."""
    if not 0 <= low <= high <= channels:
        raise ValueError(f"channel drop: expected 0 <= channel_drop_min <= channel_drop_max <= "
                         f"{channels} (the number of bands), found min={low}, max={high}")
    n = int(rng.integers(low, high + 1))
    return tuple(sorted(int(i) for i in rng.choice(channels, size=n, replace=False)))


def _rgb_jitter(rng: np.random.Generator, policy: Photometric, channels: int) -> dict:
    """torchvision ``ColorJitter.get_params``: an order of the four operations, then brightness,
    contrast, saturation factors in [max(0, 1 − a), 1 + a] and a hue shift in [−h, h]; a zero
    amount draws nothing (None)."""
    if channels != 3:
        raise ValueError(f"RGB colour jitter: expected 3 bands (R, G, B), found {channels} bands")
    out = {"jitter_order": tuple(int(i) for i in rng.permutation(4)), "rgb": True}
    for name in ("brightness", "contrast", "saturation"):
        amount = getattr(policy, name)
        out[name] = _factor(rng, amount, channels, False) if amount > 0 else None
    out["hue"] = float(rng.uniform(-policy.hue, policy.hue)) if policy.hue > 0 else None
    return out


def sample_photometric(rng: np.random.Generator, policy: Photometric, channels: int) -> dict:
    """Draws the photometric fields of a ViewParams (order: jitter, gray, blur, solarize, then
    the channel drop, drawn only when ``policy.channel_drop_p > 0``)."""
    out = dict(brightness=None, contrast=None, gray=False, blur_sigma=None, solarize=False,
               dropped=(), rgb=policy.rgb)
    if rng.random() < policy.jitter_p:
        if policy.gray_replaces_jitter and rng.random() < policy.gray_p:
            out["gray"] = True
        elif policy.rgb:
            out.update(_rgb_jitter(rng, policy, channels))
        else:
            out["brightness"] = _factor(rng, policy.brightness, channels, policy.per_band)
            out["contrast"] = _factor(rng, policy.contrast, channels, policy.per_band)
    if not policy.gray_replaces_jitter and rng.random() < policy.gray_p:
        out["gray"] = True
    if rng.random() < policy.blur_p:
        out["blur_sigma"] = float(rng.uniform(*policy.blur_sigma))
    if rng.random() < policy.solarize_p:
        out["solarize"] = True
    if policy.channel_drop_p > 0 and rng.random() < policy.channel_drop_p:
        out["dropped"] = sample_dropped_bands(rng, channels, policy.channel_drop_min,
                                              policy.channel_drop_max)
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
    unit_scale: np.ndarray               # (C,) photometric domain = x·unit_scale + unit_offset
    unit_offset: np.ndarray
    bounded: bool                        # the photometric domain is [0, 1]
    to_norm: tuple[np.ndarray, np.ndarray] | None  # unit → normalised (gain, bias); None: same
    bounds: tuple[np.ndarray, np.ndarray] | None  # stored-unit clip (softcon)
    norm: str


@functools.lru_cache(maxsize=128)
def band_plan(bands_in: tuple[str, ...], bands_out: tuple[str, ...], norm: str,
              zero_fill: tuple[str, ...] = bands_lib.ZERO_FILL) -> BandPlan:
    """The cached BandPlan of one (stored bands, model bands, normalisation) combination."""
    idx = bands_lib.band_indices(bands_in, bands_out, "band_plan", zero_fill)
    scale, offset = bands_lib.norm_coefficients(bands_out, norm)
    index = None if idx == list(range(len(bands_in))) else tuple(idx)
    unit_scale, unit_offset, bounded = bands_lib.unit_coefficients(bands_out, norm)
    return BandPlan(tuple(bands_out), index, scale, offset, unit_scale, unit_offset, bounded,
                    bands_lib.unit_to_norm(bands_out, norm),
                    bands_lib.raw_clip_bounds(bands_out, norm), norm)


def take_bands(x: np.ndarray, index) -> np.ndarray:
    """(..., C_in) → (..., C) by a BandPlan's ``index`` (None: unchanged; −1: a zero band)."""
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
                    nodata: float | None = None, fill: str = "zero",
                    out: np.ndarray | None = None, antialias: bool = False) -> np.ndarray:
    """(H, W, C_in) stored → (S, S, C) float32 in stored units (into ``out`` when given): crop
    box, band selection, no-data fill, softcon clip, bilinear resize (``antialias``: as PIL's)
    and flips. ``render_photometric`` finishes the view."""
    top, left, h, w = params.box
    region = take_bands(image[top:top + h, left:left + w], plan.index)
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
    out_h, out_w = pair(out_size)
    return resize_bilinear(x, out_h, out_w, params.vflip, params.hflip, out, antialias)


def render_photometric(x: np.ndarray, plan: BandPlan, params: ViewParams, *,
                       jitter_clip: bool = True, solarize_threshold: float = 0.5,
                       blur_truncate: float = 3.0, out: np.ndarray | None = None) -> np.ndarray:
    """(S, S, C) float32 from ``render_geometry`` (overwritten) → the finished view (S, S, C),
    written into ``out`` when given (``x`` itself may be out: then all in place).

    In the plan's unit domain: brightness / contrast fused with the map to it as one per-band
    affine (clipped to [0, 1] when the domain is bounded and ``jitter_clip``), or torchvision's
    ColorJitter for ``rgb`` views; then grayscale, blur, solarize; then the map to the normalised
    values (identity for softcon) and the dropped bands set to 0."""
    s_h, s_w, c = x.shape
    scale = plan.unit_scale.astype(np.float64)
    offset = plan.unit_offset.astype(np.float64)
    fused = params.brightness is not None and not params.rgb
    if fused:
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
    if fused and jitter_clip and plan.bounded:
        np.clip(x, 0.0, 1.0, out=x)
    if params.jitter_order is not None:
        x = colour.jitter(x, params.jitter_order, params.brightness, params.contrast,
                          params.saturation, params.hue)
    if params.gray and params.rgb:
        x = colour.luma(x)
    elif params.gray:   # einsum: a fast reduction over the short band axis
        x = np.einsum("ijk->ij", x)[..., None]
        x *= np.float32(1 / c)
    if params.blur_sigma is not None:
        x = gaussian_blur(x, params.blur_sigma, blur_truncate,
                          out=None if params.gray else out)
    if params.solarize:
        np.subtract(np.float32(1), x, out=x, where=x >= solarize_threshold)
    if params.gray:
        x = np.broadcast_to(x, (s_h, s_w, c))
        if out is None:
            x = x.copy()
    x = _unit_to_normalised(blur.write_into(x, out), plan)
    if params.dropped:
        x[..., list(params.dropped)] = 0.0
    return x


def _unit_to_normalised(x: np.ndarray, plan: BandPlan) -> np.ndarray:
    """(S, S, C) in the plan's unit domain → normalised values (in place)."""
    if plan.to_norm is None:
        return x
    s_h, s_w, c = x.shape
    flat = x.reshape(s_h, s_w * c)
    flat *= np.tile(plan.to_norm[0], s_w)
    flat += np.tile(plan.to_norm[1], s_w)
    return x


def render_view(image: np.ndarray, plan: BandPlan, params: ViewParams, out_size, *,
                nodata: float | None = None, fill: str = "zero", out: np.ndarray | None = None,
                antialias: bool = False, **photometric_kw) -> np.ndarray:
    """One view (S, S, C) float32 of an (H, W, C_in) stored image, written into ``out`` when
    given: the resize writes there unless a later step makes a new array (blur, grayscale, RGB
    jitter), which then writes there instead."""
    in_place = params.blur_sigma is None and not params.gray and params.jitter_order is None
    x = render_geometry(image, plan, params, out_size, nodata, fill, out if in_place else None,
                        antialias)
    return render_photometric(x, plan, params, out=out, **photometric_kw)


# ----- class maps -------------------------------------------------------------------------------
def nearest_taps(size: int, out: int, flip: bool = False) -> np.ndarray:
    """Nearest-neighbour source indices for resizing ``size`` samples to ``out``: output j takes
    the sample containing its centre, floor((j + 0.5)·size/out) (torch "nearest-exact"; the pixel
    nearest to the bilinear resize's source point); ``flip`` reverses the output order."""
    idx = np.floor((np.arange(out, dtype=np.float64) + 0.5) * (size / out)).astype(np.int64)
    idx = np.minimum(idx, size - 1)
    return idx[::-1].copy() if flip else idx


def render_class_map(class_map: np.ndarray, params: ViewParams, out_size) -> np.ndarray:
    """(H, W) per-pixel class map (e.g. a record's ``land_cover[t]``, 255 = unlabelled) → (S, S)
    of the same dtype through the crop box and flips of ``params``, nearest neighbour, so it stays
    aligned with ``render_view`` of the same params (photometric fields are ignored)."""
    m = np.asarray(class_map)
    if m.ndim != 2:
        raise ValueError(f"render_class_map: expected a (H, W) class map, found shape {m.shape}")
    top, left, h, w = params.box
    if top < 0 or left < 0 or top + h > m.shape[0] or left + w > m.shape[1]:
        raise ValueError(f"render_class_map: crop box {params.box} (top, left, h, w) does not fit "
                         f"the class map of shape {m.shape}")
    out_h, out_w = pair(out_size)
    rows = nearest_taps(h, out_h, params.vflip) + top
    cols = nearest_taps(w, out_w, params.hflip) + left
    return m[rows[:, None], cols[None, :]]


# ----- records ----------------------------------------------------------------------------------
def record_image(record: dict) -> np.ndarray:
    """The record's image (T, H, W, C_in); a clear error for any other rank."""
    image = np.asarray(record["image"])
    if image.ndim != 4:
        raise ValueError(f"record {record.get('key', '?')}: expected image (T, H, W, C), found "
                         f"shape {image.shape}")
    return image


def record_band_plan(record: dict, bands: Sequence[str], norm: str,
                     zero_fill_b10: bool = True) -> BandPlan:
    """The BandPlan from the record's stored bands to ``bands`` (B10 zero-filled for L2A records
    when ``zero_fill_b10``)."""
    zero_fill = bands_lib.ZERO_FILL if zero_fill_b10 else ()
    return band_plan(tuple(record["bands"]), tuple(bands), norm, zero_fill)
