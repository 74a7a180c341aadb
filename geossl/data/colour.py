"""Colour jitter of R, G, B views in [0, 1], with torchvision's semantics (numpy, host side).

torchvision's ``ColorJitter`` applies brightness, contrast, saturation and hue in a random order,
each followed by a clamp to [0, 1]: brightness scales the image, contrast blends it with the mean
of its luma, saturation with its per-pixel luma, hue rotates the HSV hue. ``RandomGrayscale``
replaces R, G and B by the luma. Luma = 0.2989 R + 0.587 G + 0.114 B (torchvision's weights).

Arrays are (H, W, 3) float32, bands in R, G, B order, values in [0, 1].
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

LUMA = np.array([0.2989, 0.587, 0.114], np.float32)
#: Operation indices of ``jitter``'s ``order`` (torchvision's ``fn_idx``).
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3


def luma(x: np.ndarray) -> np.ndarray:
    """(H, W, 3) → (H, W, 1) luma."""
    return (x @ LUMA)[..., None]


def _blend(x: np.ndarray, other, factor: float) -> np.ndarray:
    """factor·x + (1 − factor)·other, clamped to [0, 1]."""
    out = x * np.float32(factor) + np.float32(1.0 - factor) * other
    return np.clip(out, 0.0, 1.0, out=out)


def adjust_brightness(x: np.ndarray, factor: float) -> np.ndarray:
    return _blend(x, np.float32(0.0), factor)


def adjust_contrast(x: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the image's mean luma (one scalar per image)."""
    return _blend(x, np.float32(luma(x).mean(dtype=np.float64)), factor)


def adjust_saturation(x: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the per-pixel luma."""
    return _blend(x, luma(x), factor)


def rgb_to_hsv(x: np.ndarray) -> np.ndarray:
    """(..., 3) RGB in [0, 1] → (..., 3) hue in [0, 1), saturation, value; grey pixels hue 0."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(axis=-1)
    span = v - x.min(axis=-1)
    grey = span == 0
    s = np.where(grey, 0.0, span / np.where(v == 0, 1.0, v))
    d = np.where(grey, 1.0, span)
    h = np.where(v == r, (g - b) / d,                      # red is the maximum
                 np.where(v == g, 2.0 + (b - r) / d,       # green
                          4.0 + (r - g) / d))              # blue
    h = np.where(grey, 0.0, np.mod(h / 6.0, 1.0))
    return np.stack([h, s, v], axis=-1).astype(x.dtype)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of ``rgb_to_hsv`` on the hexcone: (..., 3) → (..., 3) RGB."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    sector = np.floor(h * 6.0)
    f = h * 6.0 - sector
    sector = sector.astype(np.int64) % 6
    p = np.clip(v * (1.0 - s), 0.0, 1.0)
    q = np.clip(v * (1.0 - s * f), 0.0, 1.0)
    t = np.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
    # per sector (0..5): which of v, q, p, t is R, G and B
    r = np.choose(sector, [v, q, p, p, t, v])
    g = np.choose(sector, [t, v, v, q, p, p])
    b = np.choose(sector, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1).astype(hsv.dtype)


def adjust_hue(x: np.ndarray, shift: float) -> np.ndarray:
    """Rotates the hue by ``shift`` turns (|shift| <= 0.5)."""
    hsv = rgb_to_hsv(x)
    hsv[..., 0] = np.mod(hsv[..., 0] + np.float32(shift), 1.0)
    return hsv_to_rgb(hsv)


def jitter(x: np.ndarray, order: Sequence[int], brightness: float | None, contrast: float | None,
           saturation: float | None, hue: float | None) -> np.ndarray:
    """torchvision ``ColorJitter`` with drawn factors: the operations in ``order`` (a permutation
    of BRIGHTNESS, CONTRAST, SATURATION, HUE), a None factor skipped. (H, W, 3) → (H, W, 3)."""
    if x.shape[-1] != 3:
        raise ValueError(f"RGB colour jitter: expected (H, W, 3) R, G, B, found shape {x.shape}")
    ops = {BRIGHTNESS: (adjust_brightness, brightness), CONTRAST: (adjust_contrast, contrast),
           SATURATION: (adjust_saturation, saturation), HUE: (adjust_hue, hue)}
    for i in order:
        fn, factor = ops[int(i)]
        if factor is not None:
            x = fn(x, factor)
    return x
