"""Band names, SoftCon statistics (REFERENCE §2), band selection and normalisation."""

from __future__ import annotations

from typing import Sequence

import numpy as np

S2_L1C = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
S2_L2A = tuple(b for b in S2_L1C if b != "B10")
S1 = ("VV", "VH")

_S2_MEAN = (1605.58, 1390.78, 1314.87, 1363.52, 1549.44, 2091.75, 2371.72, 2299.90, 2560.30,
            830.07, 22.10, 2177.07, 1524.07)
_S2_STD = (786.79, 850.35, 875.06, 1138.85, 1122.18, 1161.59, 1274.39, 1248.43, 1345.53, 577.32,
           51.15, 1336.10, 1136.54)
MEAN = {**dict(zip(S2_L1C, _S2_MEAN)), "VV": -12.548, "VH": -20.192}
STD = {**dict(zip(S2_L1C, _S2_STD)), "VV": 5.257, "VH": 5.912}

#: Bands that may be absent from the data and are then filled with zeros (L2A has no B10).
ZERO_FILL = ("B10",)


def canonical(name: str) -> str:
    """"B02" → "B2", "b8a" → "B8A", "vv" → "VV"."""
    n = name.strip().upper()
    if n.startswith("B") and n[1:].isdigit():
        return f"B{int(n[1:])}"
    return n


def band_indices(bands_in: Sequence[str], bands_out: Sequence[str], where: str = "") -> list[int]:
    """Index of each wanted band in ``bands_in`` (-1: zero-filled B10). Clear error if missing."""
    have = {canonical(b): i for i, b in enumerate(bands_in)}
    out = []
    for b in bands_out:
        c = canonical(b)
        if c in have:
            out.append(have[c])
        elif c in ZERO_FILL:
            out.append(-1)
        else:
            raise ValueError(f"{where or 'record'}: band {b!r} requested but the data has "
                             f"{list(bands_in)}")
    return out


def select_bands(image: np.ndarray, bands_in: Sequence[str], bands_out: Sequence[str],
                 where: str = "") -> np.ndarray:
    """(..., C_in) → (..., C_out) by band name; a missing B10 (L2A data) becomes zeros."""
    idx = band_indices(bands_in, bands_out, where)
    if all(i >= 0 for i in idx):
        return image[..., idx]
    out = np.zeros(image.shape[:-1] + (len(idx),), image.dtype)
    for j, i in enumerate(idx):
        if i >= 0:
            out[..., j] = image[..., i]
    return out


def l2a_to_l1c(image: np.ndarray, bands: Sequence[str] = S2_L2A) -> np.ndarray:
    """12-band L2A (..., 12) → 13-band L1C order with a zero B10 at index 10."""
    return select_bands(image, bands, S2_L1C)


def norm_coefficients(bands: Sequence[str], mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) per band so that normalised = x * scale + offset (before clipping)."""
    c = len(bands)
    if mode == "none":
        return np.ones(c, np.float32), np.zeros(c, np.float32)
    missing = [b for b in bands if canonical(b) not in MEAN]
    if missing:
        raise ValueError(f"no statistics for bands {missing}; known: {sorted(MEAN)}")
    mu = np.array([MEAN[canonical(b)] for b in bands], np.float64)
    sd = np.array([STD[canonical(b)] for b in bands], np.float64)
    if mode == "softcon":  # (x - (mu - 2 sd)) / (4 sd), clipped to [0, 1]
        return (1 / (4 * sd)).astype(np.float32), (-(mu - 2 * sd) / (4 * sd)).astype(np.float32)
    if mode == "meanstd":
        return (1 / sd).astype(np.float32), (-mu / sd).astype(np.float32)
    raise ValueError(f"normalisation: expected 'softcon', 'meanstd' or 'none', found {mode!r}")


def normalize(image: np.ndarray, bands: Sequence[str], mode: str = "softcon",
              nodata: float | None = None) -> np.ndarray:
    """(..., C) → float32. NaN (and ``nodata`` values) become 0 after normalisation."""
    x = np.asarray(image, np.float32)
    invalid = np.isnan(x)
    if nodata is not None:
        invalid |= x == nodata
    scale, offset = norm_coefficients(bands, mode)
    y = x * scale + offset
    if mode == "softcon":
        y = np.clip(y, 0.0, 1.0)
    if invalid.any():
        y = np.where(invalid, 0.0, y).astype(np.float32)
    return y
