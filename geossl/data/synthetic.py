"""Synthetic multi-season Sentinel-2 L1C scenes (and their Sentinel-1 rendering) with Dynamic-World
labels: the embedded demo data.

Each location is a few land-cover regions (warped Voronoi cells) of the 9 Dynamic World classes.
Every class has its own 13-band top-of-atmosphere spectrum (uint16 reflectance x 10000, near the
SSL4EO-S12 L1C band means), its own texture (canopy clumps, crop rows, street grids, ...) and its
own seasonal behaviour (vegetation greens up and browns off, crops turn to bare soil, cold places
get snow in winter), so seasons of one location differ in both pixels and labels. Each acquisition
has its own illumination scale, haze, band gains and sensor noise, so raw pixel means do not
separate classes perfectly. Labels: a class is present in an acquisition when it covers >= 5% of
the pixels; ``acq_labels`` (T*9 multi-hot), ``labels`` (the union) and the per-pixel map
``land_cover`` (T, H, W) uint8 are stored with every record.

The scene of a location (:class:`Scene`: land cover, textures, seasons, snow) is drawn first;
the S2 rendering continues the same random stream. :mod:`geossl.data.synthetic_s1` renders the same
scene as Sentinel-1 backscatter (VV, VH dB, speckled) from a stream of its own, so the S1 record
of a location is co-registered with its S2 record (same key, labels and ``land_cover``).

``generate(output_dir, modality=...)`` writes ``train-0000k-of-0000K.tfrecord`` and the labelled
probe split ``heldout-...`` (S2), ``s1-train-...`` and ``s1-heldout-...`` (S1), or both, reusing
matching existing output; the synthetic converter CLI runs it.
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Scene:
    """The land cover of one location through its seasons: what every rendering (S2, S1) shares.

    base (S, S) class per pixel without snow; textures {class: (S, S)} of base's classes;
    parcel_shift (S, S) crop phenology offset of each field; snow_field / snow_max / cold: where
    and how far snow spreads in winter; phase: the location's vegetation-cycle phase.
    """

    base: np.ndarray
    textures: dict
    phase: float
    cold: bool
    snow_field: np.ndarray
    snow_max: float
    parcel_shift: np.ndarray
    seasons: int

    def greenness(self, t: int) -> float:
        return greenness(t, self.seasons, self.phase)

    def cover(self, t: int) -> np.ndarray:
        """(S, S) int class map of acquisition ``t``: base, snow over land in a cold winter."""
        g = self.greenness(t)
        cover = self.base.copy()
        if self.cold and g < 0.3:
            snowy_fraction = self.snow_max * (0.3 - g) / 0.3
            threshold = (np.quantile(self.snow_field, snowy_fraction) if snowy_fraction > 0
                         else -np.inf)
            cover[(self.snow_field <= threshold) & (self.base != 0)] = CLASSES.index("snow_and_ice")
        return cover


def location_rng(index: int, split: str, seed: int, *stream: int) -> np.random.Generator:
    """The generator of a location: the scene and its S2 rendering; a ``stream`` tag gives an
    independent one (the S1 rendering) that leaves the S2 draws untouched."""
    return np.random.default_rng([seed, {"train": 0, "heldout": 1}.get(split, 2), index, *stream])


def draw_scene(rng: np.random.Generator, seasons: int, size: int) -> Scene:
    """The scene: the first draws of a location's generator (the S2 rendering's order)."""
    base = _regions(rng, size)
    textures = {int(c): _texture(int(c), rng, size) for c in np.unique(base)}
    phase = rng.uniform(0, 2 * np.pi)
    cold = rng.random() < 0.25
    snow_field = smooth_noise(rng, size, size / 4)
    snow_max = rng.uniform(0.4, 1.0)
    parcel_shift = 0.15 * smooth_noise(rng, size, size / 3)  # crops of different fields differ
    return Scene(base, textures, phase, cold, snow_field, snow_max, parcel_shift, seasons)


def location_key(index: int, split: str) -> str:
    return f"synthetic-{split}-{index:06d}"


def label_fields(land_cover: np.ndarray) -> dict:
    """The label features of a record from its (T, S, S) map: labels (union), acq_labels (T*9
    multi-hot, a class covering >= MIN_FRACTION of an acquisition), num_classes, land_cover."""
    k = len(CLASSES)
    fractions = np.stack([np.bincount(m.ravel(), minlength=k) / m.size for m in land_cover])
    acq = (fractions >= MIN_FRACTION).astype(np.int64)
    return {
        "labels": np.flatnonzero(acq.any(axis=0)).astype(np.int64),
        "label_set": LABEL_SET,
        "acq_labels": acq.ravel(),
        "num_classes": np.array([k], np.int64),
        "land_cover": land_cover,
    }


def make_location(index: int, *, split: str, seasons: int, size: int, seed: int) -> dict:
    """One S2 record: image (T, S, S, 13) uint16, labels, acq_labels (T*9,), land_cover
    (T, S, S)."""
    rng = location_rng(index, split, seed)
    scene = draw_scene(rng, seasons, size)
    images, maps = [], []
    for t in range(seasons):
        g = scene.greenness(t)
        cover = scene.cover(t)
        image = np.zeros((size, size, len(BANDS)))
        for c in np.unique(cover):
            where = cover == c
            v = SEASONALITY[c]
            if CLASSES[c] == "crops":
                w = np.clip(g + scene.parcel_shift, 0, 1)[where][:, None]
                spectrum = PEAK[CLASSES.index("bare_ground")] * 0.85 * (1 - w) + PEAK[c] * w
            else:
                w = 1 - v * (1 - g)
                spectrum = (PEAK[c] * DORMANT_GAIN * (1 - w) + PEAK[c] * w)[None, :]
            if CLASSES[c] == "water":
                spectrum = spectrum * (1 + 0.1 * np.sin(2 * np.pi * t / seasons + scene.phase))
            texture = scene.textures.get(int(c), None)
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
    return {"image": np.stack(images), "bands": list(BANDS), "sensor": SENSOR,
            "key": location_key(index, split), **label_fields(np.stack(maps))}


MODALITIES = ("s2", "s1", "both")
#: Metadata file of each rendering's shard sets (parameters and the write summaries).
META = {"s2": "synthetic.json", "s1": "synthetic-s1.json"}


def set_prefix(modality: str, split: str) -> str:
    """Shard-set name of a rendering's split: S2 ``train``, S1 ``s1-train`` (same folder)."""
    return split if modality == "s2" else f"{modality}-{split}"


def read_meta(output_dir: str, modality: str = "s2") -> dict | None:
    """The rendering's metadata in ``output_dir`` (None when absent or unreadable)."""
    try:
        with open(os.path.join(output_dir, META[modality])) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_current(output_dir: str, modality: str, params: dict | None = None) -> bool:
    """Whether the rendering's sets in ``output_dir`` are whole and generated with ``params``
    (default: those of the S2 sets there, so that an S1 set is co-registered with them)."""
    meta = read_meta(output_dir, modality)
    params = params if params is not None else (read_meta(output_dir, "s2") or {}).get("params")
    if meta is None or (params is not None and meta.get("params") != params):
        return False
    files = meta.get("train", {}).get("shards", []) + meta.get("heldout", {}).get("shards", [])
    return all(os.path.isfile(os.path.join(output_dir, name)) for name in files)


def generate(output_dir: str, *, num_locations: int = 2048, seasons: int = 4, size: int = 32,
             num_shards: int = 4, seed: int = 0, heldout: int = 512, heldout_shards: int = 1,
             num_workers: int | None = None, overwrite: bool = False, modality: str = "s2",
             verbose: bool = True) -> dict:
    """Writes the train and heldout shards of ``modality`` into ``output_dir``: "s2" (``train-``,
    ``heldout-``), "s1" (``s1-train-``, ``s1-heldout-``, :mod:`geossl.data.synthetic_s1`) or
    "both"; returns the summary (S2's, with S1's under "s1" for "both").

    A rendering whose metadata records the same parameters and whose shards all exist is reused
    (summary["reused"] = True) unless ``overwrite``; so "s1" or "both" adds the S1 sets to an S2
    folder without rewriting S2. S1 beside S2 sets of other parameters is refused (the two would
    not be co-registered).
    """
    if modality not in MODALITIES:
        raise ValueError(f"synthetic modality: expected one of {MODALITIES}, found {modality!r}")
    params = {"num_locations": num_locations, "seasons": seasons, "size": size,
              "num_shards": num_shards, "seed": seed, "heldout": heldout,
              "heldout_shards": heldout_shards}
    kw = dict(params=params, num_workers=num_workers, overwrite=overwrite, verbose=verbose)
    if modality == "s1":
        s2 = read_meta(output_dir, "s2")
        if s2 is not None and s2.get("params") != params:
            raise ValueError(
                f"{output_dir}: its S2 sets were generated with {s2.get('params')}, the S1 sets "
                f"were asked with {params}: they would not be co-registered; pass the same "
                f"parameters, or modality='both' to regenerate both")
        return _write_rendering(output_dir, "s1", **kw)
    summary = _write_rendering(output_dir, "s2", **kw)
    if modality == "both":
        summary["s1"] = _write_rendering(output_dir, "s1", **kw)
    return summary


def _write_rendering(output_dir: str, modality: str, *, params: dict, num_workers, overwrite: bool,
                     verbose: bool) -> dict:
    if not overwrite and is_current(output_dir, modality, params):
        return dict(read_meta(output_dir, modality), reused=True)
    if modality == "s2":
        make, bands, sensor = make_location, BANDS, SENSOR
    else:
        from geossl.data import synthetic_s1
        make, bands = synthetic_s1.make_s1_location, synthetic_s1.BANDS
        sensor = synthetic_s1.SENSOR
    splits = [("train", params["num_locations"], params["num_shards"])]
    if params["heldout"] > 0:
        splits.append(("heldout", params["heldout"], params["heldout_shards"]))
    meta = {"params": params, "classes": list(CLASSES), "bands": list(bands),
            "label_set": LABEL_SET, "sensor": sensor}
    for split, count, shards in splits:
        render = functools.partial(make, split=split, seasons=params["seasons"],
                                   size=params["size"], seed=params["seed"])
        prefix = set_prefix(modality, split)
        meta[split] = write_shards(list(range(count)), render, output_dir, prefix,
                                   num_shards=shards, num_workers=num_workers,
                                   desc=f"synthetic {prefix}", verbose=verbose)
    tmp = os.path.join(output_dir, META[modality] + ".tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, os.path.join(output_dir, META[modality]))
    return dict(meta, reused=False)
