"""Band names, SoftCon statistics (REFERENCE §2), band selection and normalisation.

Images carry their bands on the last axis, (..., C), named by ``bands`` lists such as
``("B1", ..., "B12")``. Names are compared in canonical form ("B02" == "B2", "b8a" == "B8A").

No-data policy: NaN pixels, and pixels equal to an optional ``nodata`` value, are *invalid*. After
normalisation an invalid pixel holds ``fill="zero"`` → 0, or ``fill="mean"`` → the normalised mean of
the valid pixels of that band in the array being normalised (0 when the band has none).
"""

from __future__ import annotations

import re

from typing import Mapping, Sequence

import numpy as np

#: Sentinel-2 L1C, in the order of SSL4EO-S12 and the SoftCon checkpoints.
S2_L1C = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
#: Sentinel-2 L2A (no cirrus band B10).
S2_L2A = tuple(b for b in S2_L1C if b != "B10")
#: Sentinel-1 GRD, dB.
S1 = ("VV", "VH")
#: True-colour bands in R, G, B order (RGB teachers, GFM).
S2_RGB = ("B4", "B3", "B2")

_S2_MEAN = (1605.58, 1390.78, 1314.87, 1363.52, 1549.44, 2091.75, 2371.72, 2299.90, 2560.30,
            830.07, 22.10, 2177.07, 1524.07)
_S2_STD = (786.79, 850.35, 875.06, 1138.85, 1122.18, 1161.59, 1274.39, 1248.43, 1345.53, 577.32,
           51.15, 1336.10, 1136.54)
#: 8-bit colour photographs (data_prep.images): with "meanstd" they get ImageNet normalisation.
RGB = ("R", "G", "B")
_IMAGENET_MEAN = (123.675, 116.28, 103.53)   # 255 · (0.485, 0.456, 0.406)
_IMAGENET_STD = (58.395, 57.12, 57.375)      # 255 · (0.229, 0.224, 0.225)
#: Per-band statistics, by band name: SoftCon / SSL4EO-S12 (S2 L1C digital numbers, S1 dB) and
#: ImageNet's for 8-bit R, G, B.
MEAN = {**dict(zip(S2_L1C, _S2_MEAN)), "VV": -12.548, "VH": -20.192,
        **dict(zip(RGB, _IMAGENET_MEAN))}
STD = {**dict(zip(S2_L1C, _S2_STD)), "VV": 5.257, "VH": 5.912, **dict(zip(RGB, _IMAGENET_STD))}

#: Landsat 8 / 9 OLI bands 1-9, named "L8_B1".."L8_B9" ("L9_B1".. the same bands of OLI-2): the
#: sensor prefix keeps them apart from Sentinel-2's B1.. (torchgeo names them "B1".. per dataset).
LANDSAT_OLI = tuple(f"L8_B{i}" for i in range(1, 10))
_OLI_WAVELENGTHS = (0.44, 0.48, 0.56, 0.655, 0.865, 1.61, 2.20, 0.59, 1.37)

#: Central wavelength of each band in micrometres (what DOFA's wavelength embedding reads).
#: Sentinel-2 (L1C and L2A share them): Sentinel-2A's central wavelengths, as torchgeo's
#: ``Sentinel2.wavelengths``. Landsat 8/9 OLI: midpoints of the USGS band edges (as torchgeo's
#: ``Landsat8``). 8-bit R, G, B: 0.665, 0.56, 0.49, DOFA's RGB values (Sentinel-2 B4, B3, B2
#: rounded). Sentinel-1 VV, VH: 3.75, not a physical wavelength. The C-band radar wavelength is
#: 5.55 cm (55 500 µm, torchgeo 0.8.1's ``Sentinel1.wavelength``), far outside what the
#: hypernetwork saw in pretraining. 3.75 is the placeholder that DOFA v1's pretraining table gives
#: its 2-channel Sentinel-1 input. The DOFA weights torchgeo 0.8.1 ships are v1 weights (torchgeo
#: issue 3931 and PR 3942 later documented 3.75 for them and 5.405 for DOFA v2). geossl converts
#: those weights, so it follows their convention. Its cost: DOFA's generator is equivariant in
#: the band order, so two bands of one wavelength get one kernel and VV and VH reach the model
#: only as their sum. A model trained here from scratch (or onward from DOFA v1) can tell them
#: apart by a config's ``data.wavelengths`` table, e.g. ``{"VH": 3.85}`` (configs/anysensor_vit_b.py:
#: the demo's S1 probe 55.1 → 70.5 micro mAP); its probes read the table from its workdir.
WAVELENGTHS: dict[str, float] = {
    **dict(zip(S2_L1C, (0.4427, 0.4927, 0.5598, 0.6646, 0.7041, 0.7405, 0.7828, 0.8328, 0.8647,
                        0.9451, 1.3735, 1.6137, 2.2024))),
    "VV": 3.75, "VH": 3.75,
    **dict(zip(LANDSAT_OLI, _OLI_WAVELENGTHS)),
    **{f"L9_B{i}": w for i, w in enumerate(_OLI_WAVELENGTHS, start=1)},
    **dict(zip(RGB, (0.665, 0.56, 0.49))),
}


def wavelengths(names: Sequence[str], table: Mapping[str, float] | None = None) -> np.ndarray:
    """(C,) float32 central wavelengths (µm) of the bands ``names`` (:data:`WAVELENGTHS`, names in
    canonical form: "B02" == "B2"), ``table`` (band → µm, e.g. a config's ``data.wavelengths``)
    overriding its entries; unknown bands raise ValueError naming them."""
    if isinstance(names, str):
        raise ValueError(f"wavelengths: expected a sequence of band names, found the string {names!r}")
    known = dict(WAVELENGTHS, **{canonical(b): float(w) for b, w in (table or {}).items()})
    unknown = [b for b in names if canonical(b) not in known]
    if unknown:
        raise ValueError(f"wavelengths: no central wavelength for bands {unknown}; known: "
                         f"{sorted(known)}")
    return np.array([known[canonical(b)] for b in names], np.float32)


def check_wavelength_table(table, path: str = "config.data.wavelengths") -> dict[str, float]:
    """``table`` (band → µm) as a dict, or ConfigError naming ``path`` for a value that is not a
    positive number."""
    from geossl.errors import ConfigError
    out = {}
    for band, w in dict(table or {}).items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
            raise ConfigError(f"{path}.{band}: expected a wavelength in µm > 0, found {w!r}")
        out[band] = float(w)
    return out


#: Bands that may be absent from the data and are then zeros in the stored units (L2A has no B10).
#: The zeros are normalised like stored B10 values (and count as no-data when ``nodata == 0``).
ZERO_FILL = ("B10",)

NORM_MODES = ("softcon", "meanstd", "none")
FILL_MODES = ("zero", "mean")


def canonical(name: str) -> str:
    """"B02" → "B2", "b8a" / "B08A" → "B8A", "vv" → "VV"."""
    n = str(name).strip().upper()
    m = re.fullmatch(r"B0*(\d+)(A?)", n)
    return f"B{int(m.group(1))}{m.group(2)}" if m else n


def band_indices(bands_in: Sequence[str], bands_out: Sequence[str], where: str = "",
                 zero_fill: Sequence[str] = ZERO_FILL) -> list[int]:
    """Index of each of ``bands_out`` in ``bands_in``; -1 for a missing band of ``zero_fill``."""
    have = {canonical(b): i for i, b in enumerate(bands_in)}
    fill = {canonical(b) for b in zero_fill}
    out = []
    for b in bands_out:
        c = canonical(b)
        if c in have:
            out.append(have[c])
        elif c in fill:
            out.append(-1)
        else:
            raise ValueError(f"{where or 'image'}: band {b!r} requested but the data has bands "
                             f"{list(bands_in)}")
    return out


def select_bands(image: np.ndarray, bands_in: Sequence[str], bands_out: Sequence[str],
                 where: str = "", zero_fill: Sequence[str] = ZERO_FILL) -> np.ndarray:
    """(..., C_in) → (..., C_out) by band name; a missing band of ``zero_fill`` becomes zeros.
    Returns ``image`` itself when the bands already match."""
    if image.shape[-1] != len(bands_in):
        raise ValueError(f"{where or 'image'}: {len(bands_in)} band names {list(bands_in)} but "
                         f"the image has {image.shape[-1]} channels (shape {image.shape})")
    idx = band_indices(bands_in, bands_out, where, zero_fill)
    if idx == list(range(image.shape[-1])):
        return image
    if min(idx, default=0) >= 0:
        return image[..., idx]
    out = np.zeros(image.shape[:-1] + (len(idx),), image.dtype)
    for j, i in enumerate(idx):
        if i >= 0:
            out[..., j] = image[..., i]
    return out


def l2a_to_l1c(image: np.ndarray, bands: Sequence[str] = S2_L2A) -> np.ndarray:
    """(..., 12) L2A → (..., 13) in L1C order, a zero B10 inserted at index 10."""
    return select_bands(image, bands, S2_L1C, where="l2a_to_l1c")


def norm_coefficients(bands: Sequence[str], mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset), each (C,) float32, so that normalised = x·scale + offset (before any clip).
    softcon: (x − (μ − 2σ)) / (4σ); meanstd: (x − μ) / σ; none: x."""
    c = len(bands)
    if mode == "none":
        return np.ones(c, np.float32), np.zeros(c, np.float32)
    if mode not in NORM_MODES:
        raise ValueError(f"normalisation: expected one of {NORM_MODES}, found {mode!r}")
    missing = [b for b in bands if canonical(b) not in MEAN]
    if missing:
        raise ValueError(f"normalisation {mode!r}: no statistics for bands {missing}; "
                         f"known: {sorted(MEAN)}")
    mu = np.array([MEAN[canonical(b)] for b in bands], np.float64)
    sd = np.array([STD[canonical(b)] for b in bands], np.float64)
    if mode == "softcon":
        lo, width = mu - 2 * sd, 4 * sd
        return (1 / width).astype(np.float32), (-lo / width).astype(np.float32)
    return (1 / sd).astype(np.float32), (-mu / sd).astype(np.float32)


def unit_coefficients(bands: Sequence[str], mode: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """(scale, offset, bounded): the per-band affine from stored units to the domain where
    photometric augmentations act, and whether that domain is [0, 1] (jitter then clips to it).

    softcon: its own normalised values ([0, 1]). 8-bit R, G, B (``RGB``) under any other mode:
    x / 255, as torchvision's ``ToTensor`` before ``ColorJitter`` (the normalisation follows the
    augmentations). Otherwise the normalised values themselves, unbounded (meanstd has no range).
    """
    if mode == "softcon":
        scale, offset = norm_coefficients(bands, mode)
        return scale, offset, True
    if bands and all(canonical(b) in RGB for b in bands):
        c = len(bands)
        return np.full(c, 1 / 255, np.float32), np.zeros(c, np.float32), True
    scale, offset = norm_coefficients(bands, mode)
    return scale, offset, False


def unit_to_norm(bands: Sequence[str], mode: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(gain, bias), each (C,) float32, with normalised = unit·gain + bias (``unit_coefficients``'
    domain); None where the two are the same values (softcon, meanstd on non-RGB bands)."""
    scale, offset = norm_coefficients(bands, mode)
    unit_scale, unit_offset, _ = unit_coefficients(bands, mode)
    if np.array_equal(unit_scale, scale) and np.array_equal(unit_offset, offset):
        return None
    ratio = scale.astype(np.float64) / unit_scale
    return ratio.astype(np.float32), (offset - unit_offset * ratio).astype(np.float32)


def raw_clip_bounds(bands: Sequence[str], mode: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Bounds (lo, hi), each (C,) float32, in stored units that the normalised clip to [0, 1]
    corresponds to (softcon: μ ∓ 2σ); None for modes without a clip."""
    if mode != "softcon":
        return None
    mu = np.array([MEAN[canonical(b)] for b in bands], np.float64)
    sd = np.array([STD[canonical(b)] for b in bands], np.float64)
    return (mu - 2 * sd).astype(np.float32), (mu + 2 * sd).astype(np.float32)


def invalid_mask(image: np.ndarray, nodata: float | None = None) -> np.ndarray | None:
    """Boolean mask of NaN / ``nodata`` pixels (same shape as ``image``), or None if there are none."""
    mask = None
    if np.issubdtype(image.dtype, np.floating):
        nan = np.isnan(image)
        if nan.any():
            mask = nan
    if nodata is not None:
        nd = image == nodata
        if nd.any():
            mask = nd if mask is None else mask | nd
    return mask


def fill_values(image: np.ndarray, mask: np.ndarray, fill: str, scale: np.ndarray,
                offset: np.ndarray) -> np.ndarray:
    """(C,) float32 values in stored units that invalid pixels take before normalisation so that
    they normalise to the ``fill`` policy (see the module docstring)."""
    if fill == "zero":
        return (-offset / scale).astype(np.float32)
    if fill != "mean":
        raise ValueError(f"no-data fill: expected one of {FILL_MODES}, found {fill!r}")
    flat = image.reshape(-1, image.shape[-1]).astype(np.float64)
    valid = ~mask.reshape(flat.shape)
    count = valid.sum(axis=0)
    total = np.where(valid, flat, 0.0).sum(axis=0)
    zero = -offset / scale
    return np.where(count > 0, total / np.maximum(count, 1), zero).astype(np.float32)


def normalize(image: np.ndarray, bands: Sequence[str], mode: str = "softcon",
              nodata: float | None = None, fill: str = "zero") -> np.ndarray:
    """(..., C) any dtype → (..., C) float32 normalised per band (``mode``: softcon, meanstd, none);
    softcon is clipped to [0, 1]. NaN / ``nodata`` pixels follow ``fill`` (module docstring)."""
    if image.shape[-1] != len(bands):
        raise ValueError(f"normalize: {len(bands)} band names but the image has "
                         f"{image.shape[-1]} channels (shape {image.shape})")
    scale, offset = norm_coefficients(bands, mode)
    x = np.array(image, np.float32)
    mask = invalid_mask(image, nodata)
    if mask is not None:
        np.copyto(x, np.broadcast_to(fill_values(x, mask, fill, scale, offset), x.shape), where=mask)
    x *= scale
    x += offset
    if mode == "softcon":
        np.clip(x, 0.0, 1.0, out=x)
    return x
