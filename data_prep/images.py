"""Shards from folders of JPEG / PNG / TIFF images (GeoPile's sources, RESISC45-like class folders).

    python -m data_prep.images --input /data/RESISC45,/data/PatternNet --output /data/geopile \
        [--masks /data/maps] [--prefix train --num_shards 16]

Each image becomes one record: ``image`` (1, H, W, C) in its stored dtype (8-bit colour images:
bands R, G, B, sensor "rgb"; ``--bands`` names the channels of other TIFFs), ``key`` = the input
folder's name / the image's relative path. An image inside a sub-folder of an input folder takes
that sub-folder's name as its class: ``labels`` = [class index] over the sorted class names of all
inputs, ``num_classes``, ``label_set`` (``--label_set``, default the input folders' names joined by
"+"); the class list is in ``PREFIX.summary.json``. Images directly in an input folder have no
label. With ``--masks DIR``, the reference map at the image's relative path under DIR (any of
.png / .tif / .tiff) is stored as ``land_cover`` (1, H, W) uint8 (class index, 255 = unlabelled),
the layout of the synthetic data's maps. Records are written in a seeded random order, so shards
mix classes. An unreadable image, a map of another size or a map with values above 255 stops the
run naming the file (``--skip_bad`` counts and skips it instead).
"""

from __future__ import annotations

import argparse
import functools
import os
import random

import numpy as np

from data_prep.common import BadInputError, add_writer_flags, write_shards
from geossl.data import bands as bands_lib

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
MASK_EXTENSIONS = (".png", ".tif", ".tiff")
RGB_BANDS = bands_lib.RGB
STORED_DTYPES = ("uint8", "uint16", "int16", "float32")


# ----- reading -------------------------------------------------------------------------------------
def _is_tiff(path: str) -> bool:
    return path.lower().endswith((".tif", ".tiff"))


def read_array(path: str, *, colour: bool = True) -> np.ndarray:
    """An image file as (H, W) or (H, W, C): TIFF through tifffile (channel-first planes of up
    to 16 bands are moved last), JPEG / PNG through Pillow (with ``colour``, palette, grey+alpha,
    RGBA, CMYK become RGB; without, a palette image gives its indices). Raises BadInputError
    naming the file."""
    try:
        if _is_tiff(path):
            import tifffile
            array = np.squeeze(tifffile.imread(path))
            if array.ndim == 3 and array.shape[0] <= 16 < array.shape[-1]:
                array = np.moveaxis(array, 0, -1)
        else:
            from PIL import Image
            with Image.open(path) as img:
                img.load()
                if colour and img.mode in ("1", "P", "LA", "RGBA", "CMYK", "YCbCr", "PA"):
                    img = img.convert("RGB")
                array = np.asarray(img)
    except BadInputError:
        raise
    except Exception as e:  # noqa: BLE001 - image libraries raise many types for broken files
        raise BadInputError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None
    if array.ndim not in (2, 3) or min(array.shape[:2]) == 0:
        raise BadInputError(f"{path}: expected an image (H, W) or (H, W, C), found shape {array.shape}")
    return array


def as_bands(array: np.ndarray, path: str, bands: tuple[str, ...] | None) -> tuple[np.ndarray, tuple]:
    """(H, W[, C]) → ((H, W, C) array, band names). Without ``bands``: grey → R, G, B repeated,
    3 channels → R, G, B; other counts need ``bands``."""
    if array.ndim == 2:
        array = array[..., None]
    c = array.shape[-1]
    if bands is None:
        if c == 1:
            array = np.repeat(array, 3, axis=-1)
        elif c != 3:
            raise BadInputError(f"{path}: {c} channels; expected 1 (grey) or 3 (R, G, B), or "
                                f"name the {c} channels with --bands")
        bands = RGB_BANDS
    elif c != len(bands):
        raise BadInputError(f"{path}: {c} channels but --bands names {len(bands)}: {list(bands)}")
    if array.dtype.name not in STORED_DTYPES:
        raise BadInputError(f"{path}: pixel type {array.dtype}; expected one of {STORED_DTYPES}")
    return np.ascontiguousarray(array), tuple(bands)


def read_mask(path: str, shape: tuple[int, int]) -> np.ndarray:
    """A single-channel class map (H, W) → (1, H, W) uint8; it must match the image's H, W."""
    array = read_array(path, colour=False)
    if array.ndim != 2:
        raise BadInputError(f"{path}: expected a single-channel class map (H, W), found shape "
                            f"{array.shape}")
    if array.shape != shape:
        raise BadInputError(f"{path}: class map of size {array.shape} for an image of size {shape}")
    if array.dtype.kind not in "ui" or array.min() < 0 or array.max() > 255:
        raise BadInputError(f"{path}: expected class indices 0..255 (255 = unlabelled), found "
                            f"{array.dtype} in [{array.min()}, {array.max()}]")
    return array.astype(np.uint8)[None]


# ----- listing ------------------------------------------------------------------------------------
def find_images(root: str) -> list[str]:
    """Sorted relative paths of the images under ``root`` (hidden files and folders skipped)."""
    found = []
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(folder, name), root))
    return sorted(found)


def class_of(relpath: str) -> str | None:
    """The first folder of ``relpath`` (its class), or None for an image at the top level."""
    parts = relpath.split(os.sep)
    return parts[0] if len(parts) > 1 else None


def find_mask(masks_dir: str, relpath: str) -> str | None:
    """The map at ``relpath`` under ``masks_dir`` with any mask extension, or None."""
    stem = os.path.splitext(os.path.join(masks_dir, relpath))[0]
    for ext in MASK_EXTENSIONS + tuple(e.upper() for e in MASK_EXTENSIONS):
        if os.path.isfile(stem + ext):
            return stem + ext
    return None


# ----- records ------------------------------------------------------------------------------------
def make_record(item, *, bands, sensor: str, label_set: str, num_classes: int) -> dict:
    """One record from ``(root, relpath, label or -1, mask path or None)``."""
    root, relpath, label, mask_path = item
    path = os.path.join(root, relpath)
    image, names = as_bands(read_array(path), path, bands)
    record = {
        "image": image[None],
        "bands": list(names),
        "sensor": sensor,
        "key": f"{os.path.basename(os.path.normpath(root))}/{relpath.replace(os.sep, '/')}",
        "labels": np.array([label] if label >= 0 else [], np.int64),
        "label_set": label_set if label >= 0 else "",
    }
    if label >= 0:
        record["num_classes"] = np.array([num_classes], np.int64)
    if mask_path is not None:
        record["land_cover"] = read_mask(mask_path, image.shape[:2])
    return record


def convert(inputs, output_dir: str, *, masks: str | None = None, label_set: str | None = None,
            bands: tuple[str, ...] | None = None, sensor: str = "rgb", prefix: str = "train",
            num_shards: int = 16, num_workers=None, skip_bad: bool = False, seed: int = 0,
            verbose: bool = True) -> dict:
    """Converts every image under the ``inputs`` folders; returns the write_shards summary
    (plus ``classes``, ``label_set``, ``images`` per input and ``masks`` found)."""
    roots = [os.path.abspath(r) for r in inputs]
    for root in roots:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"--input {root}: not a folder")
    if masks and not os.path.isdir(masks):
        raise FileNotFoundError(f"--masks {masks}: not a folder")
    listed = {root: find_images(root) for root in roots}
    empty = [r for r, files in listed.items() if not files]
    if empty:
        raise FileNotFoundError(f"--input: no {'/'.join(IMAGE_EXTENSIONS)} images under {empty}")
    classes = sorted({c for files in listed.values() for c in map(class_of, files) if c})
    index = {c: i for i, c in enumerate(classes)}
    label_set = label_set or "+".join(os.path.basename(os.path.normpath(r)) for r in roots)
    items = []
    for root, files in listed.items():
        for rel in files:
            c = class_of(rel)
            items.append((root, rel, index[c] if c else -1, find_mask(masks, rel) if masks else None))
    random.Random(seed).shuffle(items)
    make = functools.partial(make_record, bands=tuple(bands) if bands else None, sensor=sensor,
                             label_set=label_set, num_classes=len(classes))
    return write_shards(items, make, output_dir, prefix, num_shards=num_shards,
                        num_workers=num_workers, skip_bad=skip_bad, desc=f"images {prefix}",
                        verbose=verbose,
                        extra_summary={"classes": classes, "label_set": label_set if classes else "",
                                       "images": {r: len(f) for r, f in listed.items()},
                                       "masks": sum(1 for it in items if it[3])})


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m data_prep.images",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True,
                        help="image folder(s), comma-separated; sub-folder names are classes")
    parser.add_argument("--masks", default=None,
                        help="folder of per-image class maps at the images' relative paths "
                             "(PNG/TIFF, single channel, 255 = unlabelled)")
    parser.add_argument("--label_set", default=None,
                        help="name of the class nomenclature (default: the input folder names)")
    parser.add_argument("--bands", default=None,
                        help="comma-separated channel names for TIFFs that are not grey / R,G,B")
    parser.add_argument("--sensor", default="rgb", help="sensor name stored in each record")
    parser.add_argument("--seed", type=int, default=0, help="seed of the record order")
    add_writer_flags(parser, prefix="train", num_shards=16)
    args = parser.parse_args(argv)
    inputs = [p for p in (s.strip() for s in args.input.split(",")) if p]
    bands = tuple(b.strip() for b in args.bands.split(",")) if args.bands else None
    return convert(inputs, args.output, masks=args.masks, label_set=args.label_set, bands=bands,
                   sensor=args.sensor, prefix=args.prefix, num_shards=args.num_shards,
                   num_workers=args.num_workers, skip_bad=args.skip_bad, seed=args.seed)


if __name__ == "__main__":
    from data_prep.common import run_cli
    run_cli(main, "python -m data_prep.images")
