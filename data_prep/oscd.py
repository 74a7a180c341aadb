"""OSCD (Onera Satellite Change Detection) city folders -> TFRecord shards of image pairs.

    python -m data_prep.oscd --images "/data/OSCD/... - Images" \
        --labels "/data/OSCD/... - Train Labels,/data/OSCD/... - Test Labels" --output /data/oscd \
        [--split train|test|all --tile 96 --rectified]

Layout (the three zips of the Onera release, as torchgeo's OSCD reader and the dataset's own
code read them):
- ``IMAGES/train.txt``, ``IMAGES/test.txt``: the 14 train and 10 test cities, comma-separated on
  one line;
- ``IMAGES/<city>/imgs_1/`` and ``imgs_2/`` (the two dates): one single-band Sentinel-2 L1C
  GeoTIFF per band, named ``<product>_B01.tif`` ... ``<product>_B12.tif`` and ``..._B8A.tif``
  (the band is the name's last ``_`` part), at native resolution: 10 m B02 B03 B04 B08, 20 m B05
  B06 B07 B8A B11 B12, 60 m B01 B09 B10. ``imgs_1_rect/``, ``imgs_2_rect/`` hold the same bands
  already resampled to the 10 m grid (read with ``--rectified``); ``dates.txt`` the two dates
  (the last word of each line);
- ``LABELS/<city>/cm/<city>-cm.tif`` (1 no change, 2 change) or ``LABELS/<city>/cm/cm.png``
  (0 no change, 255 change), where LABELS is one of the ``--labels`` folders (Train Labels,
  Test Labels).

Each city (or, with ``--tile N``, each N x N px window of it: tiling.py) is one record:
``image`` (2, H, W, 13) in the stored dtype (uint16), bands B1 ... B8 B8A B9 B10 B11 B12 on the
10 m grid of B02; the 20 m and 60 m bands are put on it by pixel repetition (each coarse pixel
covers 2 x 2 / 6 x 6 grid pixels from the top-left corner; a coarse band one pixel short of the
grid repeats its last row / column), so every stored value is a measured one. Extra features:
``change`` (H, W) uint8 (1 change, 0 no change, 255 unknown: tif values other than 1 and 2),
``city``, ``dates`` (when dates.txt is there); ``labels`` empty, ``label_set`` "oscd_change".
Without ``--labels`` records carry no ``change``. ``--split all`` writes the sets ``train`` and
``test``. A city folder without its 13 bands, a band off the grid, or a mask of another size stops
the run naming the file (``--skip_bad`` counts the city instead).
"""

from __future__ import annotations

import argparse
import functools
import glob
import os

import numpy as np

from data_prep import tiling
from data_prep.common import BadInputError, add_writer_flags, read_band, write_shards
from geossl.data.codec import IMAGE_DTYPES
from geossl.data.parallel_writer import committed_together

#: record bands (geossl names) and the OSCD file band of each
BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
FILE_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11",
              "B12")
#: grid pixels per band pixel along each side (10 m bands: 1)
FACTORS = {"B05": 2, "B06": 2, "B07": 2, "B8A": 2, "B11": 2, "B12": 2, "B01": 6, "B09": 6,
           "B10": 6}
GRID_BAND = "B02"
SPLITS = ("train", "test")
LABEL_SET = "oscd_change"
IGNORE = 255


def read_city_list(images_dir: str, split: str) -> list[str]:
    """Cities of ``IMAGES/<split>.txt`` (comma- or line-separated)."""
    path = os.path.join(images_dir, f"{split}.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing city list (expected comma-separated city "
                                f"names)")
    with open(path) as f:
        return [c.strip() for c in f.read().replace("\n", ",").split(",") if c.strip()]


def band_files(folder: str) -> dict[str, str]:
    """{file band (B01 ... B8A): path} of the GeoTIFFs in one date's folder."""
    if not os.path.isdir(folder):
        raise BadInputError(f"{folder}: missing band folder")
    found = {}
    for path in glob.glob(os.path.join(glob.escape(folder), "*.tif")):
        band = os.path.splitext(os.path.basename(path))[0].split("_")[-1].upper()
        if band in found:
            raise BadInputError(f"{folder}: two files for band {band}: "
                                f"{os.path.basename(found[band])}, {os.path.basename(path)}")
        found[band] = path
    missing = [b for b in FILE_BANDS if b not in found]
    if missing:
        raise BadInputError(f"{folder}: missing band file(s) {missing} (expected *_B01.tif ... "
                            f"*_B12.tif and *_B8A.tif); found {sorted(found)}")
    return found


def date_folder(images_dir: str, city: str, date: int, rectified: bool) -> str:
    return os.path.join(images_dir, city, f"imgs_{date}" + ("_rect" if rectified else ""))


def grid_size(images_dir: str, city: str, rectified: bool) -> tuple[int, int]:
    """(H, W) of the city's 10 m grid: the B02 file of date 1, from its header."""
    return tiling.image_size(band_files(date_folder(images_dir, city, 1, rectified))[GRID_BAND])


def to_grid(band: np.ndarray, factor: int, size: tuple[int, int], path: str) -> np.ndarray:
    """(h, w) -> ``size`` by pixel repetition (``factor`` grid pixels per band pixel)."""
    height, width = size
    need = (-(-height // factor), -(-width // factor))  # band pixels covering the grid
    if any(abs(have - want) > 1 for have, want in zip(band.shape, need)):
        raise BadInputError(f"{path}: band of {band.shape[0]}x{band.shape[1]} px does not fit the "
                            f"{height}x{width} px 10 m grid at {10 * factor} m (expected about "
                            f"{need[0]}x{need[1]} px)")
    rows = np.minimum(np.arange(height) // factor, band.shape[0] - 1)
    cols = np.minimum(np.arange(width) // factor, band.shape[1] - 1)
    return band[rows[:, None], cols[None, :]]


def read_date(folder: str, rectified: bool) -> np.ndarray:
    """One date's 13 bands on the 10 m grid: (H, W, 13)."""
    files = band_files(folder)
    grid = read_band(files[GRID_BAND])
    bands = []
    for name in FILE_BANDS:
        band = grid if name == GRID_BAND else read_band(files[name])
        factor = 1 if rectified else FACTORS.get(name, 1)
        if factor == 1 and band.shape != grid.shape:
            raise BadInputError(f"{files[name]}: band of {band.shape[0]}x{band.shape[1]} px, "
                                f"expected the {grid.shape[0]}x{grid.shape[1]} px 10 m grid of "
                                f"{os.path.basename(files[GRID_BAND])}")
        if band.dtype != grid.dtype:
            raise BadInputError(f"{files[name]}: pixel type {band.dtype}, expected {grid.dtype} "
                                f"as {os.path.basename(files[GRID_BAND])}")
        bands.append(band if factor == 1 else to_grid(band, factor, grid.shape, files[name]))
    return np.stack(bands, axis=-1)


def mask_candidates(labels_dirs, city: str) -> list[str]:
    return [os.path.join(d, city, "cm", name) for d in labels_dirs
            for name in (f"{city}-cm.tif", "cm.png")]


def read_change(labels_dirs, city: str, size: tuple[int, int]) -> np.ndarray:
    """The city's change mask (H, W) uint8: 1 change, 0 no change, 255 unknown."""
    candidates = mask_candidates(labels_dirs, city)
    path = next((p for p in candidates if os.path.isfile(p)), None)
    if path is None:
        raise BadInputError(f"{city}: no change mask; looked for " + ", ".join(candidates))
    if path.endswith(".tif"):
        values = read_band(path)
        change = np.select([values == 1, values == 2], [0, 1], IGNORE).astype(np.uint8)
    else:
        from PIL import Image
        try:
            with Image.open(path) as img:
                grey = np.asarray(img.convert("L"))
        except Exception as e:  # noqa: BLE001 - Pillow raises many types for broken files
            raise BadInputError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None
        change = (grey != 0).astype(np.uint8)
    if change.shape != tuple(size):
        raise BadInputError(f"{path}: mask of {change.shape[0]}x{change.shape[1]} px for a "
                            f"{size[0]}x{size[1]} px image")
    return change


def read_dates(images_dir: str, city: str) -> list[str] | None:
    path = os.path.join(images_dir, city, "dates.txt")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return [line.split()[-1] for line in f if line.split()]


@functools.lru_cache(maxsize=1)
def load_city(images_dir: str, labels_dirs: tuple, city: str, rectified: bool) -> dict:
    """A city's pair (2, H, W, 13), change mask and dates (cached: its tiles come one after
    another)."""
    if not os.path.isdir(os.path.join(images_dir, city)):
        raise BadInputError(f"{os.path.join(images_dir, city)}: missing city folder")
    dates = [read_date(date_folder(images_dir, city, d, rectified), rectified) for d in (1, 2)]
    if dates[0].shape != dates[1].shape or dates[0].dtype != dates[1].dtype:
        raise BadInputError(f"{os.path.join(images_dir, city)}: imgs_1 is {dates[0].shape} "
                            f"{dates[0].dtype}, imgs_2 {dates[1].shape} {dates[1].dtype}")
    image = np.stack(dates)
    if image.dtype.name not in IMAGE_DTYPES:
        raise BadInputError(f"{os.path.join(images_dir, city)}: pixel type {image.dtype}; "
                            f"expected one of {IMAGE_DTYPES}")
    change = read_change(labels_dirs, city, image.shape[1:3]) if labels_dirs else None
    return {"image": image, "change": change, "dates": read_dates(images_dir, city)}


def make_record(item, *, images_dir: str, labels_dirs: tuple, rectified: bool,
                tile: int) -> dict:
    """One record from ``(city, window, error)`` (tiling.list_windows)."""
    city, window, error = item
    if error is not None:
        raise BadInputError(error)
    scene = load_city(images_dir, labels_dirs, city, rectified)
    top, left, rows, cols = window
    record = {
        "image": np.ascontiguousarray(scene["image"][:, top:top + rows, left:left + cols]),
        "bands": list(BANDS),
        "sensor": "s2_l1c",
        "key": tiling.window_key(city, window, tile),
        "labels": np.zeros(0, np.int64),
        "label_set": LABEL_SET,
        "city": city,
    }
    if scene["change"] is not None:
        record["change"] = np.ascontiguousarray(scene["change"][top:top + rows, left:left + cols])
    if scene["dates"]:
        record["dates"] = scene["dates"]
    return record


def convert(images_dir: str, output_dir: str, *, labels_dirs=(), split: str = "all",
            tile: int = 0, rectified: bool = False, num_shards: int = 4, num_workers=None,
            skip_bad: bool = False, verbose: bool = True) -> dict:
    """Writes the ``train`` and/or ``test`` sets; returns {split: write_shards summary}."""
    if split not in SPLITS + ("all",):
        raise ValueError(f"--split: expected train, test or all, found {split!r}")
    if tile < 0:
        raise ValueError(f"--tile: expected 0 (whole cities) or a size in px, found {tile}")
    for folder in (images_dir, *labels_dirs):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{folder}: not a folder")
    images_dir, labels_dirs = os.path.abspath(images_dir), tuple(map(os.path.abspath, labels_dirs))
    make = functools.partial(make_record, images_dir=images_dir, labels_dirs=labels_dirs,
                             rectified=rectified, tile=tile)
    summaries = {}
    load_city.cache_clear()  # a scene cached by an earlier run in this process may have changed
    with committed_together():  # a bad city in test leaves an older train set too
        for name in SPLITS if split == "all" else (split,):
            cities = read_city_list(images_dir, name)
            items = tiling.list_windows(cities, lambda c: grid_size(images_dir, c, rectified),
                                        tile)
            summaries[name] = write_shards(
                items, make, output_dir, name, num_shards=num_shards, num_workers=num_workers,
                skip_bad=skip_bad, desc=f"oscd {name}", verbose=verbose,
                extra_summary={"cities": cities, "tile": tile, "rectified": rectified,
                               "bands": list(BANDS), "labels": list(labels_dirs)})
    return summaries


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m data_prep.oscd",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True,
                        help="the 'Onera Satellite Change Detection dataset - Images' folder "
                             "(city folders, train.txt, test.txt)")
    parser.add_argument("--labels", default="",
                        help="comma-separated label folders (<city>/cm/<city>-cm.tif or "
                             "cm.png), e.g. the Train Labels and Test Labels folders")
    parser.add_argument("--split", default="all", choices=SPLITS + ("all",),
                        help="cities of IMAGES/train.txt, test.txt, or both (two shard sets)")
    parser.add_argument("--tile", type=int, default=0,
                        help="records of TILE x TILE px windows (0: one record per city)")
    parser.add_argument("--rectified", action="store_true",
                        help="read imgs_1_rect / imgs_2_rect (bands already on the 10 m grid) "
                             "instead of the native-resolution imgs_1 / imgs_2")
    add_writer_flags(parser, prefix=None, with_prefix=False, num_shards=4)
    args = parser.parse_args(argv)
    labels = [p.strip() for p in args.labels.split(",") if p.strip()]
    return convert(args.images, args.output, labels_dirs=labels, split=args.split,
                   tile=args.tile, rectified=args.rectified, num_shards=args.num_shards,
                   num_workers=args.num_workers, skip_bad=args.skip_bad)


if __name__ == "__main__":
    from data_prep.common import run_cli
    run_cli(main, "python -m data_prep.oscd")
