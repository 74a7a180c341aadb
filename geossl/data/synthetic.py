"""Synthetic multi-season Sentinel-2 L1C scenes with Dynamic-World labels: the embedded demo data.

Each location is a few land-cover regions (warped Voronoi cells) of the 9 Dynamic World classes.
Every class has its own 13-band top-of-atmosphere spectrum (uint16 reflectance x 10000, near the
SSL4EO-S12 L1C band means), its own texture (canopy clumps, crop rows, street grids, ...) and its
own seasonal behaviour (vegetation greens up and browns off, crops turn to bare soil, cold places
get snow in winter), so seasons of one location differ in both pixels and labels. Each acquisition
has its own illumination scale, haze, band gains and sensor noise, so raw pixel means do not
separate classes perfectly. Labels: a class is present in an acquisition when it covers >= 5% of
the pixels; ``acq_labels`` (T*9 multi-hot), ``labels`` (the union) and the per-pixel map
``land_cover`` (T, H, W) uint8 are stored with every record.

``generate(output_dir, **kw)`` writes ``train-0000k-of-0000K.tfrecord`` and the labelled probe
split ``heldout-...`` (reusing matching existing output); the synthetic converter CLI runs it.
"""

from __future__ import annotations

import functools
import json
import os

import numpy as np

from geossl.data.parallel_writer import write_shards

CLASSES = ("water", "trees", "grass", "flooded_vegetation", "crops", "shrub_and_scrub", "built",
           "bare_ground", "snow_and_ice")
BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
LABEL_SET = "dynamic_world_9"
SENSOR = "s2_l1c"
MIN_FRACTION = 0.05

# Peak-season TOA reflectance x 10000 per class, bands in BANDS order.
PEAK = np.array([
    [1500, 1250, 1100, 850, 780, 680, 640, 600, 560, 210, 10, 300, 200],         # water
    [1350, 1080, 980, 780, 1150, 2200, 2700, 2850, 3050, 950, 15, 1650, 820],    # trees
    [1420, 1220, 1230, 1100, 1520, 2300, 2600, 2700, 2850, 920, 18, 2400, 1500],  # grass
    [1400, 1150, 1080, 900, 1100, 1550, 1780, 1850, 1950, 620, 12, 1150, 680],   # flooded veg.
    [1450, 1250, 1320, 1150, 1700, 2600, 3050, 3250, 3350, 1050, 20, 2450, 1500],  # crops
    [1560, 1400, 1460, 1620, 1900, 2200, 2380, 2450, 2600, 950, 22, 2950, 2250],  # shrub & scrub
    [1720, 1620, 1640, 1720, 1860, 1980, 2080, 2140, 2240, 860, 26, 2650, 2350],  # built
    [1800, 1750, 1980, 2350, 2520, 2700, 2800, 2880, 3000, 1120, 30, 3550, 3050],  # bare ground
    [3500, 3420, 3330, 3220, 3160, 3090, 3010, 2920, 2860, 1300, 60, 620, 480],   # snow & ice
], dtype=np.float64)
# How strongly each class follows the vegetation cycle (0 = not at all).
SEASONALITY = np.array([0.0, 0.35, 0.6, 0.5, 1.0, 0.3, 0.0, 0.0, 0.0])
# Dormant vegetation relative to its peak: less red-edge / NIR, more red and SWIR.
DORMANT_GAIN = np.array([1.0, 1.05, 1.0, 1.3, 1.1, 0.8, 0.7, 0.68, 0.68, 0.8, 1.0, 1.15, 1.25])
# Prior of a class being one of a location's regions.
CLASS_PRIOR = np.array([0.12, 0.18, 0.15, 0.06, 0.17, 0.1, 0.1, 0.09, 0.03])
HAZE_PROFILE = np.array([1.0, 0.85, 0.65, 0.45, 0.35, 0.25, 0.2, 0.15, 0.12, 0.05, 0.0, 0.02, 0.0])


def smooth_noise(rng: np.random.Generator, size: int, cell: float) -> np.ndarray:
    """(size, size) smooth random field with features of about ``cell`` pixels, ~unit std."""
    n = int(size / cell) + 2
    grid = rng.standard_normal((n, n))
    x = np.arange(size) / cell
    i = x.astype(int)
    f = x - i
    f = f * f * (3 - 2 * f)
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
    out = rows[:, i] * (1 - f) + rows[:, i + 1] * f
    return (out - out.mean()) / (out.std() + 1e-6)


def _texture(cls: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size) multiplicative texture of one class at one location (fixed across seasons)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    name = CLASSES[cls]
    if name == "water":
        return 1 + 0.02 * smooth_noise(rng, size, size / 3)
    if name == "trees":
        return 1 + 0.14 * smooth_noise(rng, size, 1.5) + 0.05 * smooth_noise(rng, size, 8)
    if name == "grass":
        return 1 + 0.06 * smooth_noise(rng, size, 4)
    if name == "flooded_vegetation":
        return 1 - 0.15 * np.clip(smooth_noise(rng, size, 3), 0, None)
    if name == "crops":
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(3, 6)
        rows = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
        parcel = max(4, size // int(rng.integers(2, 5)))
        gains = rng.uniform(0.85, 1.15, (size // parcel + 1, size // parcel + 1))
        return (1 + 0.08 * rows) * gains[(yy // parcel).astype(int), (xx // parcel).astype(int)]
    if name == "shrub_and_scrub":
        dots = (rng.random((size, size)) < 0.25).astype(np.float64)
        return 1 + 0.18 * (dots - 0.25) + 0.04 * smooth_noise(rng, size, 5)
    if name == "built":
        block = int(rng.integers(4, 8))
        ox, oy = rng.integers(0, block, 2)
        streets = (((xx + ox) % block) < 1) | (((yy + oy) % block) < 1)
        roofs = rng.uniform(0.75, 1.35, (size // block + 2, size // block + 2))
        tex = roofs[((yy + oy) // block).astype(int), ((xx + ox) // block).astype(int)]
        return np.where(streets, 0.7, tex)
    if name == "bare_ground":
        return 1 + 0.08 * smooth_noise(rng, size, size / 2) + 0.03 * smooth_noise(rng, size, 2)
    return 1 + 0.03 * smooth_noise(rng, size, 6)  # snow & ice


def _regions(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size) int class map: 1-4 warped Voronoi regions with distinct classes."""
    num = int(rng.choice([1, 2, 3, 4], p=[0.15, 0.35, 0.3, 0.2]))
    classes = rng.choice(len(CLASSES), size=num, replace=False, p=CLASS_PRIOR)
    if num == 1:
        return np.full((size, size), classes[0], dtype=np.int64)
    seeds = rng.uniform(0, size, (num, 2))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dist = np.stack([np.hypot(yy - sy, xx - sx) + 0.15 * size * smooth_noise(rng, size, size / 3)
                     for sy, sx in seeds])
    return classes[np.argmin(dist, axis=0)]


def greenness(season: int, seasons: int, phase: float) -> float:
    """Vegetation cycle in [0, 1] (0 = winter) of acquisition ``season`` at a location."""
    return float(0.5 - 0.5 * np.cos(2 * np.pi * season / seasons + phase))


def make_location(index: int, *, split: str, seasons: int, size: int, seed: int) -> dict:
    """One record: image (T, S, S, 13) uint16, labels, acq_labels (T*9,), land_cover (T, S, S)."""
    rng = np.random.default_rng([seed, {"train": 0, "heldout": 1}.get(split, 2), index])
    k = len(CLASSES)
    base = _regions(rng, size)
    present = np.unique(base)
    textures = {int(c): _texture(int(c), rng, size) for c in present}
    phase = rng.uniform(0, 2 * np.pi)
    cold = rng.random() < 0.25
    snow_field = smooth_noise(rng, size, size / 4)
    snow_max = rng.uniform(0.4, 1.0)
    parcel_shift = 0.15 * smooth_noise(rng, size, size / 3)  # crops of different fields differ

    images, maps = [], []
    for t in range(seasons):
        g = greenness(t, seasons, phase)
        cover = base.copy()
        if cold and g < 0.3:
            snowy_fraction = snow_max * (0.3 - g) / 0.3
            threshold = np.quantile(snow_field, snowy_fraction) if snowy_fraction > 0 else -np.inf
            cover[(snow_field <= threshold) & (base != 0)] = CLASSES.index("snow_and_ice")
        image = np.zeros((size, size, len(BANDS)))
        for c in np.unique(cover):
            where = cover == c
            v = SEASONALITY[c]
            if CLASSES[c] == "crops":
                w = np.clip(g + parcel_shift, 0, 1)[where][:, None]
                spectrum = PEAK[CLASSES.index("bare_ground")] * 0.85 * (1 - w) + PEAK[c] * w
            else:
                w = 1 - v * (1 - g)
                spectrum = (PEAK[c] * DORMANT_GAIN * (1 - w) + PEAK[c] * w)[None, :]
            if CLASSES[c] == "water":
                spectrum = spectrum * (1 + 0.1 * np.sin(2 * np.pi * t / seasons + phase))
            texture = textures.get(int(c), None)
            if texture is None:
                texture = 1 + 0.03 * smooth_noise(rng, size, 6)
            image[where] = spectrum * texture[where][:, None]
        illumination = rng.uniform(0.8, 1.2)
        gains = rng.normal(1.0, 0.03, len(BANDS))
        haze = rng.uniform(0, 300) * HAZE_PROFILE
        image = image * illumination * gains + haze
        image += rng.standard_normal(image.shape) * (0.02 * image + 15)
        images.append(np.clip(np.rint(image), 1, 20000).astype(np.uint16))
        maps.append(cover.astype(np.uint8))

    land_cover = np.stack(maps)
    fractions = np.stack([np.bincount(m.ravel(), minlength=k) / m.size for m in land_cover])
    acq = (fractions >= MIN_FRACTION).astype(np.int64)
    return {
        "image": np.stack(images),
        "bands": list(BANDS),
        "sensor": SENSOR,
        "key": f"synthetic-{split}-{index:06d}",
        "labels": np.flatnonzero(acq.any(axis=0)).astype(np.int64),
        "label_set": LABEL_SET,
        "acq_labels": acq.ravel(),
        "num_classes": np.array([k], np.int64),
        "land_cover": land_cover,
    }


def generate(output_dir: str, *, num_locations: int = 2048, seasons: int = 4, size: int = 32,
             num_shards: int = 4, seed: int = 0, heldout: int = 512, heldout_shards: int = 1,
             num_workers: int | None = None, overwrite: bool = False,
             verbose: bool = True) -> dict:
    """Writes the train and heldout shards into ``output_dir``; returns a summary dict.

    When ``output_dir/synthetic.json`` records the same parameters and every shard exists, the
    existing data is reused (summary["reused"] = True) unless ``overwrite``.
    """
    params = {"num_locations": num_locations, "seasons": seasons, "size": size,
              "num_shards": num_shards, "seed": seed, "heldout": heldout,
              "heldout_shards": heldout_shards}
    meta_path = os.path.join(output_dir, "synthetic.json")
    if not overwrite and os.path.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        files = meta.get("train", {}).get("shards", []) + meta.get("heldout", {}).get("shards", [])
        if meta.get("params") == params and all(
                os.path.isfile(os.path.join(output_dir, name)) for name in files):
            return dict(meta, reused=True)
    splits = [("train", num_locations, num_shards)]
    if heldout > 0:
        splits.append(("heldout", heldout, heldout_shards))
    meta = {"params": params, "classes": list(CLASSES), "bands": list(BANDS),
            "label_set": LABEL_SET, "sensor": SENSOR}
    for split, count, shards in splits:
        make = functools.partial(make_location, split=split, seasons=seasons, size=size,
                                 seed=seed)
        meta[split] = write_shards(list(range(count)), make, output_dir, split, num_shards=shards,
                                   num_workers=num_workers, desc=f"synthetic {split}",
                                   verbose=verbose)
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=1)
    return dict(meta, reused=False)
