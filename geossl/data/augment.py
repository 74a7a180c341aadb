"""Multispectral augmentation in numpy, deterministic given a ``np.random.Generator``.

Images are (H, W, C). ``crop_and_resize`` follows torchvision's bilinear resize of tensors
(align_corners=False, no antialiasing); the crop box follows ``RandomResizedCrop.get_params``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import ndimage

from geossl.data import bands as bands_lib


# ----- geometry ---------------------------------------------------------------------------------
def random_resized_crop_box(rng: np.random.Generator, height: int, width: int,
                            scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w): area fraction in ``scale``, aspect (log-uniform) in ``ratio``; 10 tries,
    then the centre crop of the closest admissible aspect (torchvision semantics)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def _linear_taps(start: int, size: int, out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source rows (i0, i1) and weight of i1 for a bilinear resize of [start, start+size) to out."""
    src = (np.arange(out, dtype=np.float64) + 0.5) * (size / out) - 0.5
    src = np.clip(src, 0.0, None)
    i0 = np.minimum(np.floor(src).astype(np.int64), size - 1)
    i1 = np.minimum(i0 + 1, size - 1)
    return start + i0, start + i1, (src - i0).astype(np.float32)


def crop_and_resize(image: np.ndarray, box: tuple[int, int, int, int], out_size: int,
                    pointwise=None) -> np.ndarray:
    """(H,W,C) any dtype → (out,out,C) float32: bilinear resize of the box. ``pointwise`` (a
    per-pixel function, e.g. normalisation) is applied to the source pixels before interpolating."""
    top, left, h, w = box
    r0, r1, wr = _linear_taps(top, h, out_size)
    c0, c1, wc = _linear_taps(left, w, out_size)
    rows = np.concatenate([r0, r1])
    cols = np.concatenate([c0, c1])
    patch = image[rows[:, None], cols[None, :]].astype(np.float32)  # (2o, 2o, C)
    if pointwise is not None:
        patch = pointwise(patch)
    o = out_size
    top_rows, bottom_rows = patch[:o], patch[o:]
    wr = wr[:, None, None]
    mixed = top_rows + (bottom_rows - top_rows) * wr  # (o, 2o, C)
    wc = wc[None, :, None]
    return mixed[:, :o] + (mixed[:, o:] - mixed[:, :o]) * wc


# ----- photometric ------------------------------------------------------------------------------
def brightness_contrast(x: np.ndarray, brightness: float, contrast: float,
                        rng: np.random.Generator) -> np.ndarray:
    """x·b, then (x − band mean)·c + band mean; b ~ U[1−brightness, 1+brightness], c likewise."""
    b = rng.uniform(max(0.0, 1 - brightness), 1 + brightness)
    c = rng.uniform(max(0.0, 1 - contrast), 1 + contrast)
    x = x * np.float32(b)
    mean = x.mean(axis=(0, 1), keepdims=True)
    return (x - mean) * np.float32(c) + mean


def band_mean_gray(x: np.ndarray) -> np.ndarray:
    """Grayscale equivalent: every band replaced by the mean over bands."""
    return np.broadcast_to(x.mean(axis=-1, keepdims=True), x.shape).copy()


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian over H and W (reflect borders, radius 3σ)."""
    return ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0), mode="reflect", truncate=3.0)


# ----- views ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ViewConfig:
    """SoftCon / MoCo-v3 style view parameters (SSL4EO-S12 recipe, REFERENCE §1)."""

    img_size: int = 224
    bands: Sequence[str] = bands_lib.S2_L1C
    norm: str = "softcon"
    num_classes: int = 9
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    brightness: float = 0.4
    contrast: float = 0.4
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: tuple[float, float] = (1.0, 0.1)   # view 1, view 2
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    flip: bool = True
    nodata: float | None = None


def augment_view(image: np.ndarray, image_bands: Sequence[str], rng: np.random.Generator,
                 cfg: ViewConfig, blur_p: float) -> np.ndarray:
    """One acquisition (H,W,C_in) → an augmented, normalised view (S,S,len(cfg.bands)) float32."""
    x = bands_lib.select_bands(image, image_bands, cfg.bands)
    scale, offset = bands_lib.norm_coefficients(cfg.bands, cfg.norm)
    clip = cfg.norm == "softcon"

    def normalise(p):
        invalid = np.isnan(p) if cfg.nodata is None else (np.isnan(p) | (p == cfg.nodata))
        p = p * scale + offset
        if clip:
            p = np.clip(p, 0.0, 1.0)
        return np.where(invalid, np.float32(0), p)

    box = random_resized_crop_box(rng, x.shape[0], x.shape[1], cfg.crop_scale, cfg.crop_ratio)
    v = crop_and_resize(x, box, cfg.img_size, pointwise=normalise)
    if cfg.flip and rng.random() < 0.5:
        v = v[:, ::-1]
    if rng.random() < cfg.jitter_p:
        v = brightness_contrast(v, cfg.brightness, cfg.contrast, rng)
        if clip:
            v = np.clip(v, 0.0, 1.0)
    if rng.random() < cfg.gray_p:
        v = band_mean_gray(v)
    if rng.random() < blur_p:
        v = gaussian_blur(v, rng.uniform(*cfg.blur_sigma))
    return np.ascontiguousarray(v, dtype=np.float32)


def acquisition_labels(record: dict, num_classes: int) -> np.ndarray:
    """(T, K) float32 multi-hot per acquisition: ``acq_labels`` when present, else ``labels``
    repeated for every acquisition."""
    t = record["image"].shape[0]
    if "acq_labels" in record:
        k = int(np.asarray(record.get("num_classes", [num_classes])).reshape(-1)[0])
        acq = np.asarray(record["acq_labels"]).reshape(t, k)
        if k != num_classes:
            raise ValueError(f"record {record.get('key')}: {k} classes, config expects {num_classes}")
        return acq.astype(np.float32)
    labels = np.asarray(record.get("labels", []), np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"record {record.get('key')}: labels {labels.tolist()} outside [0, {num_classes})")
    hot = np.zeros(num_classes, np.float32)
    hot[labels] = 1.0
    return np.broadcast_to(hot, (t, num_classes)).copy()


def two_view_sample(record: dict, rng: np.random.Generator, cfg: ViewConfig) -> dict:
    """SoftCon sample: two different acquisitions t1 ≠ t2 (the same one if T == 1), each augmented.
    Returns view1/view2 (S,S,C) float32 and labels1/labels2 (K,) float32 of their acquisitions."""
    image = record["image"]
    t = image.shape[0]
    t1 = int(rng.integers(t))
    t2 = t1 if t == 1 else int((t1 + 1 + rng.integers(t - 1)) % t)
    labels = acquisition_labels(record, cfg.num_classes)
    bands = list(record["bands"])
    return {"view1": augment_view(image[t1], bands, rng, cfg, cfg.blur_p[0]),
            "view2": augment_view(image[t2], bands, rng, cfg, cfg.blur_p[1]),
            "labels1": labels[t1], "labels2": labels[t2]}
