"""Sentinel-1 GRD rendering of the synthetic scenes: backscatter σ0 in dB, bands VV and VH.

Every location of :mod:`geossl.data.synthetic` is rendered a second time as the SAR sensor sees it:
the same :class:`~geossl.data.synthetic.Scene` (land cover, textures, seasons, snow), so the
record has the S2 record's key, labels, ``acq_labels`` and ``land_cover`` (co-registered, as
SSL4EO-S12's S1 and S2 patches of one location). Stored as data_prep.ssl4eo stores S1: float32 dB,
bands VV, VH, sensor ``s1_grd``; plus ``incidence_angle`` (T,) float32, the scene centre's angle.

σ0 at the reference incidence 37.5° (mid IW swath), dB, VV / VH; "dormant" at greenness g = 0,
"peak" at g = 1, linear in g between (crops: tilled soil → full canopy by each field's own
phenology as in S2; snow and ice: dry → wet with the melt season, wetness = g):

    class               dormant        peak           angle slope
    water               −21 / −28      −21 / −28      −0.50 dB/°   specular; wind adds +Exp(2 dB)
    trees               −8.0 / −14.0   −7.0 / −12.5   −0.08        volume scattering
    grass               −12.5 / −20    −10.5 / −17    −0.20
    flooded vegetation  −6.0 / −16.0   −4.0 / −14.5   −0.15        double bounce (co-pol)
    crops               −12 / −20.5    −9.5 / −14.5   −0.18        VH follows biomass
    shrub and scrub     −11.5 / −18.5  −10.5 / −17    −0.15
    built               −2.0 / −9.5    −2.0 / −9.5    −0.12        corner reflectors
    bare ground         −15 / −24      −15 / −24      −0.25        dry, moderately rough
    snow and ice        −13 / −21 dry  −20 / −27.5 wet −0.20       wet snow absorbs

Values chosen within the ranges reported by: Ulaby & Long, "Microwave Radar and Radiometric
Remote Sensing" (2014) for soils, vegetation and urban targets; Twele et al. 2016 (IJRS 37(13),
Sentinel-1 flood mapping: open water below about −18 dB VV); Tsyganskaya et al. 2018 (IJRS 39(8),
flooded vegetation review: double bounce raises co-pol by several dB); Veloso et al. 2017 (RSE 199,
Sentinel-1 crop cycles: VH about −22 → −15 dB with biomass, VV a few dB); Nagler & Rott 2000 (IEEE
TGRS 38(2)) and Nagler et al. 2016 (Remote Sensing 8(4)): dry snow nearly transparent at C band,
wet snow ≥ 3 dB darker; Mladenova et al. 2013 (IEEE TGRS 51(3)): σ0 in dB about linear in the
incidence angle, −0.1 to −0.3 dB/° over land, steeper over water. The demo data's mean (std) is
VV −11.5 (5.4), VH −18.7 (5.6) dB, near SSL4EO-S12's S1 statistics that the configs normalise with
(VV −12.5 (5.3), VH −20.2 (5.9), ``geossl.data.bands.MEAN`` / ``STD``).

Per acquisition: the location is seen from one of its two relative orbits (ascending, range
towards +x; descending, −x), each at its own scene-centre angle in the IW swath (29.1°–46.0°),
with the swath's angle gradient across the scene (16.9° over 250 km: 0.0007° per 10 m pixel,
0.02° over 32 px: negligible at this scale, unlike the orbits' angles, up to ~15° apart); wind roughening on water;
a soil-moisture offset N(0, 1 dB) weighted by how much soil a class shows. The S2 class texture
modulates σ0 in dB (a per-class gain: strong for roofs and streets, canopy gaps and crop rows).
Speckle: the intensity times Gamma(L, 1/L) (mean 1, variance 1/L) with L = ENL = 4.4, Sentinel-1
IW GRD high resolution's equivalent number of looks (20 × 22 m resolution on the 10 m grid; ESA
Sentinel-1 User Guide), each pixel independent (a simplification: GRD pixels are correlated),
applied in linear power before the conversion to dB. Every draw comes from the location's own S1
stream (``synthetic.location_rng(..., S1_STREAM)``): the S2 records do not change.
"""

from __future__ import annotations

import numpy as np

from geossl.data import synthetic

BANDS = ("VV", "VH")
SENSOR = "s1_grd"
ENL = 4.4
S1_STREAM = 0x5331          # "S1": the tag of the S1 random stream of a location
REFERENCE_INCIDENCE = 37.5  # degrees, where SIGMA0_DB holds
IW_SWATH_DEG = (29.1, 46.0)
IW_SWATH_M = 250_000.0
PIXEL_M = 10.0
DB_RANGE = (-50.0, 20.0)    # stored values are clipped to it

# σ0 in dB at REFERENCE_INCIDENCE: [class, dormant | peak, VV | VH] (module docstring).
SIGMA0_DB = np.array([
    [[-21.0, -28.0], [-21.0, -28.0]],    # water
    [[-8.0, -14.0], [-7.0, -12.5]],      # trees
    [[-12.5, -20.0], [-10.5, -17.0]],    # grass
    [[-6.0, -16.0], [-4.0, -14.5]],      # flooded vegetation
    [[-12.0, -20.5], [-9.5, -14.5]],     # crops
    [[-11.5, -18.5], [-10.5, -17.0]],    # shrub and scrub
    [[-2.0, -9.5], [-2.0, -9.5]],        # built
    [[-15.0, -24.0], [-15.0, -24.0]],    # bare ground
    [[-13.0, -21.0], [-20.0, -27.5]],    # snow and ice (dry | wet)
])
ANGLE_SLOPE_DB = np.array([-0.5, -0.08, -0.2, -0.15, -0.18, -0.15, -0.12, -0.25, -0.2])
# σ0 dB offset per dB of 10·log10(texture): how strongly the class texture shows in SAR.
TEXTURE_GAIN = np.array([3.0, 2.0, 1.0, 2.0, 2.0, 1.5, 3.0, 1.0, 1.0])
# σ0 dB offset per dB of the acquisition's soil-moisture offset: how much soil a class shows.
MOISTURE_GAIN = np.array([0.0, 0.2, 0.6, 0.0, 0.8, 0.5, 0.0, 1.0, 0.0])
_WATER = synthetic.CLASSES.index("water")
_CROPS = synthetic.CLASSES.index("crops")


def backscatter_db(cover: np.ndarray, greenness: float, incidence, *, textures=None,
                   parcel_shift=None, wind_db: float = 0.0, moisture_db: float = 0.0) -> np.ndarray:
    """(S, S, 2) noise-free σ0 in dB (VV, VH) of a class map ``cover`` (S, S) at ``greenness``
    in [0, 1] and ``incidence`` (degrees, scalar or (S, S)); ``textures`` {class: (S, S)} and
    ``parcel_shift`` (S, S) as the scene's (None: flat)."""
    cover = np.asarray(cover)
    incidence = np.broadcast_to(np.asarray(incidence, np.float64), cover.shape)
    out = np.empty(cover.shape + (2,))
    for c in np.unique(cover):
        where = cover == c
        w = np.full((int(where.sum()), 1), float(greenness))
        if c == _CROPS and parcel_shift is not None:
            w = np.clip(greenness + parcel_shift[where], 0, 1)[:, None]
        sigma = SIGMA0_DB[c, 0] * (1 - w) + SIGMA0_DB[c, 1] * w
        sigma = sigma + ANGLE_SLOPE_DB[c] * (incidence[where] - REFERENCE_INCIDENCE)[:, None]
        texture = (textures or {}).get(int(c))
        if texture is not None:
            texture_db = 10 * np.log10(np.maximum(texture[where], 0.05))
            sigma = sigma + TEXTURE_GAIN[c] * texture_db[:, None]
        sigma = sigma + MOISTURE_GAIN[c] * moisture_db + (wind_db if c == _WATER else 0.0)
        out[where] = sigma
    return out


def speckle(rng: np.random.Generator, sigma0_db: np.ndarray, enl: float = ENL) -> np.ndarray:
    """σ0 (dB, any shape) → observed dB: linear power times Gamma(enl, 1/enl), back to dB."""
    power = 10.0 ** (np.asarray(sigma0_db) / 10.0) * rng.gamma(enl, 1.0 / enl, np.shape(sigma0_db))
    return 10.0 * np.log10(power)


def incidence_map(center_deg: float, direction: int, size: int) -> np.ndarray:
    """(S, S) incidence angle: ``center_deg`` at the scene centre, growing along +x
    (``direction`` +1, ascending) or −x (−1, descending) at the IW swath's rate."""
    per_pixel = (IW_SWATH_DEG[1] - IW_SWATH_DEG[0]) / IW_SWATH_M * PIXEL_M
    x = np.arange(size) - (size - 1) / 2
    return np.broadcast_to(center_deg + direction * per_pixel * x, (size, size))


def make_s1_location(index: int, *, split: str, seasons: int, size: int, seed: int,
                     speckled: bool = True) -> dict:
    """One S1 record: image (T, S, S, 2) float32 dB, co-registered with ``make_location``'s
    record of the same arguments; ``speckled=False`` gives the noise-free σ0 of the same draws."""
    scene = synthetic.draw_scene(synthetic.location_rng(index, split, seed), seasons, size)
    rng = synthetic.location_rng(index, split, seed, S1_STREAM)
    near, far = IW_SWATH_DEG
    orbits = rng.uniform(near + 1.0, far - 1.0, 2)  # (ascending, descending) centre angles
    images, maps, angles = [], [], []
    for t in range(seasons):
        orbit = int(rng.integers(2))
        wind_db = min(rng.exponential(2.0), 10.0)
        moisture_db = rng.normal(0.0, 1.0)
        cover = scene.cover(t)
        angles.append(orbits[orbit])
        images.append(backscatter_db(
            cover, scene.greenness(t), incidence_map(orbits[orbit], 1 - 2 * orbit, size),
            textures=scene.textures, parcel_shift=scene.parcel_shift, wind_db=wind_db,
            moisture_db=moisture_db))
        maps.append(cover.astype(np.uint8))
    image = np.stack(images)
    if speckled:
        image = speckle(rng, image)
    return {"image": np.clip(image, *DB_RANGE).astype(np.float32), "bands": list(BANDS),
            "sensor": SENSOR, "key": synthetic.location_key(index, split),
            **synthetic.label_fields(np.stack(maps)),
            "incidence_angle": np.array(angles, np.float32)}
