"""Image + class-map folders (DFC2020, ISPRS Vaihingen, ...) -> TFRecord shards for segmentation.

    python -m data_prep.segmentation_folders --images /data/DFC2020/ROIs0000_test/s2_0 \
        --masks /data/DFC2020/ROIs0000_test/dfc_0 --pair _s2_:_dfc_ --bands s2_l1c \
        --class_map 1:0,2:1,4:2,5:3,6:4,7:5,9:6,10:7 --output /data/dfc2020 \
        [--prefix test --tile 128]

Pairing: every image under ``--images`` (.tif/.tiff/.png/.jpg, any depth) has its map at the same
relative path under ``--masks``, after ``--pair OLD:NEW`` replaces OLD by NEW in that path
(DFC2020: ``s2_0/ROIs0000_test_s2_0_p0.tif`` -> ``dfc_0/ROIs0000_test_dfc_0_p0.tif`` with
``_s2_:_dfc_``; Vaihingen: ``top/top_mosaic_09cm_area1.tif`` -> ``gts_for_participants/`` the same
name, no ``--pair``), with any of the extensions .png/.tif/.tiff. An image without its map stops
the run naming both paths (``--skip_bad`` counts it instead).

Images: GeoTIFF (channel-first planes of up to 16 bands are moved last) or PNG/JPEG, stored in
their dtype (float64 as float32); ``--bands`` names the channels (comma-separated, or a preset:
s2_l1c = B1 ... B8 B8A B9 B10 B11 B12, s2_l2a, s1 = VV VH, rgb); 1- and 3-channel images default
to R, G, B, which must be 8-bit (the configs scale them by 1/255): a 16-bit image stored as R, G,
B is refused by name. Maps: single-channel class indices; ``--ignore_index K`` marks K as
unlabelled (255); ``--class_map A:B,...`` maps source values to classes, every value not listed
becoming 255; or
RGB colour-coded maps with ``--palette`` (``R-G-B:class,...`` or ``isprs``: the ISPRS 2D labelling
legend, impervious surfaces 255-255-255:0, building 0-0-255:1, low vegetation 0-255-255:2, tree
0-255-0:3, car 255-255-0:4, clutter 255-0-0:5), other colours 255. Every class must be below
``--num_classes`` (default: one more than the largest class of --class_map / --palette).

Each image (or, with ``--tile N``, each N x N px window of it: tiling.py) is one record:
``image`` (1, H, W, C), ``land_cover`` (1, H, W) uint8, ``num_classes``, ``label_set``
(``--label_set``), empty ``labels``, ``key`` = the image's relative path [+ ``/r<top>_c<left>``].
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os

import numpy as np

from data_prep import tiling
from data_prep.common import BadInputError, add_writer_flags, channels_last, write_shards
from data_prep.images import MASK_EXTENSIONS, as_bands, check_8bit_rgb, find_images, read_array
from geossl.data import bands as bands_lib

IGNORE = 255
BAND_PRESETS = {"s2_l1c": bands_lib.S2_L1C, "s2_l2a": bands_lib.S2_L2A, "s1": bands_lib.S1,
                "rgb": bands_lib.RGB}
PRESET_SENSORS = {"s2_l1c": "s2_l1c", "s2_l2a": "s2_l2a", "s1": "s1_grd", "rgb": "rgb"}
PALETTES = {"isprs": (((255, 255, 255), 0), ((0, 0, 255), 1), ((0, 255, 255), 2),
                      ((0, 255, 0), 3), ((255, 255, 0), 4), ((255, 0, 0), 5))}


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """How source maps become classes: ``class_map`` ((value, class), ...) or ``palette``
    (((r, g, b), class), ...), ``ignore_index`` (a source value meaning unlabelled)."""

    num_classes: int
    class_map: tuple = ()
    palette: tuple = ()
    ignore_index: int | None = None


def parse_class_map(text: str) -> tuple:
    """"1:0,2:1" -> ((1, 0), (2, 1))."""
    pairs = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        source, sep, target = part.partition(":")
        try:
            pairs.append((int(source), int(target)))
        except ValueError:
            raise ValueError(f"--class_map: expected VALUE:CLASS pairs of integers, found "
                             f"{part!r}") from None
        if not sep or not 0 <= pairs[-1][1] < IGNORE:
            raise ValueError(f"--class_map: {part!r}: expected VALUE:CLASS with CLASS in 0..254")
    return tuple(pairs)


def parse_palette(text: str) -> tuple:
    """"255-255-255:0,0-0-255:1" (or a preset name) -> (((255, 255, 255), 0), ((0, 0, 255), 1))."""
    if text in PALETTES:
        return PALETTES[text]
    pairs = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        colour, _, target = part.partition(":")
        try:
            rgb = tuple(int(v) for v in colour.split("-"))
            pairs.append((rgb, int(target)))
        except ValueError:
            raise ValueError(f"--palette: expected R-G-B:CLASS, found {part!r}") from None
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb) or not 0 <= int(target) < IGNORE:
            raise ValueError(f"--palette: {part!r}: expected R-G-B:CLASS with 0..255 colour "
                             f"values and CLASS in 0..254")
    return tuple(pairs)


def parse_bands(text: str | None) -> tuple[str, ...] | None:
    if not text:
        return None
    if text in BAND_PRESETS:
        return tuple(BAND_PRESETS[text])
    return tuple(b.strip() for b in text.split(",") if b.strip())


def mask_path_for(masks_dir: str, relpath: str, pair: tuple[str, str] | None) -> str:
    """The map of image ``relpath``: the first existing file of the paired stem with a mask
    extension; else the .png path expected (missing)."""
    rel = relpath.replace(pair[0], pair[1]) if pair else relpath
    stem = os.path.splitext(os.path.join(masks_dir, rel))[0]
    for ext in MASK_EXTENSIONS + tuple(e.upper() for e in MASK_EXTENSIONS):
        if os.path.isfile(stem + ext):
            return stem + ext
    return stem + ".{png,tif,tiff}"


def to_classes(source: np.ndarray, spec: MaskSpec, path: str) -> np.ndarray:
    """A source map (H, W) or colour map (H, W, 3|4) -> (H, W) uint8 classes, 255 unlabelled."""
    if spec.palette:
        if source.ndim != 3 or source.shape[-1] not in (3, 4):
            raise BadInputError(f"{path}: --palette needs an RGB colour map (H, W, 3), found "
                                f"shape {source.shape}")
        rgb = source[..., :3].astype(np.int64)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        out = np.full(code.shape, IGNORE, np.uint8)
        for (r, g, b), target in spec.palette:
            out[code == (r << 16) | (g << 8) | b] = target
        return out
    if source.ndim != 2:
        raise BadInputError(f"{path}: expected a single-channel class map (H, W), found shape "
                            f"{source.shape} (colour maps need --palette)")
    if source.dtype.kind not in "ui":
        raise BadInputError(f"{path}: expected integer class values, found {source.dtype}")
    values = source.astype(np.int64)
    ignored = (values == spec.ignore_index if spec.ignore_index is not None
               else np.zeros(values.shape, bool))
    if spec.class_map:
        out = np.full(values.shape, IGNORE, np.uint8)
        for value, target in spec.class_map:
            out[values == value] = target
    else:
        bad = ((values < 0) | (values > IGNORE)) & ~ignored
        if bad.any():
            raise BadInputError(f"{path}: class value {int(values[bad][0])} outside 0..255 "
                                f"(map it with --class_map)")
        out = np.clip(values, 0, IGNORE).astype(np.uint8)
    out[ignored] = IGNORE
    over = (out >= spec.num_classes) & (out != IGNORE)
    if over.any():
        raise BadInputError(f"{path}: class {int(out[over][0])} not below --num_classes "
                            f"{spec.num_classes}")
    return out


@functools.lru_cache(maxsize=1)
def load_pair(image_path: str, mask_path: str, bands, spec: MaskSpec):
    """(image (H, W, C), band names, classes (H, W) uint8), cached: tiles come one after another."""
    array = read_array(image_path, colour=False)
    if bands:
        array = channels_last(array, len(bands))
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    image, names = as_bands(array, image_path, bands)
    channels = array.shape[-1] if array.ndim == 3 else 1
    rgb_depth = check_8bit_rgb(image_path, image.dtype, channels, names)
    if rgb_depth:
        raise BadInputError(f"{rgb_depth}: convert the images to 8-bit first (16-bit TIFF or grey "
                            "PNG values: --bands NAMES keeps them under other band names)")
    if not os.path.isfile(mask_path):
        raise BadInputError(f"{image_path}: no class map; expected {mask_path}")
    classes = to_classes(read_array(mask_path, colour=bool(spec.palette)), spec, mask_path)
    if classes.shape != image.shape[:2]:
        raise BadInputError(f"{mask_path}: class map of {classes.shape[0]}x{classes.shape[1]} px "
                            f"for an image of {image.shape[0]}x{image.shape[1]} px")
    return image, names, classes


def make_record(item, *, images_dir: str, masks_dir: str, pair, bands, spec: MaskSpec,
                sensor: str, label_set: str, tile: int) -> dict:
    """One record from ``(relpath, window, error)`` (tiling.list_windows)."""
    relpath, window, error = item
    if error is not None:
        raise BadInputError(error)
    image, names, classes = load_pair(os.path.join(images_dir, relpath),
                                      mask_path_for(masks_dir, relpath, pair), bands, spec)
    top, left, rows, cols = window
    return {
        "image": np.ascontiguousarray(image[top:top + rows, left:left + cols])[None],
        "bands": list(names),
        "sensor": sensor,
        "key": tiling.window_key(relpath.replace(os.sep, "/"), window, tile),
        "labels": np.zeros(0, np.int64),
        "label_set": label_set,
        "num_classes": np.array([spec.num_classes], np.int64),
        "land_cover": np.ascontiguousarray(classes[top:top + rows, left:left + cols])[None],
    }


def mask_spec(*, num_classes: int | None, class_map: str | None, palette: str | None,
              ignore_index: int | None) -> MaskSpec:
    if class_map and palette:
        raise ValueError("--class_map and --palette exclude each other")
    pairs = parse_class_map(class_map) if class_map else ()
    colours = parse_palette(palette) if palette else ()
    mapped = [t for _, t in pairs or colours]
    if num_classes is None:
        if not mapped:
            raise ValueError("--num_classes: needed for maps without --class_map or --palette")
        num_classes = max(mapped) + 1
    if not 1 <= num_classes <= IGNORE:
        raise ValueError(f"--num_classes: expected 1..255, found {num_classes}")
    if mapped and max(mapped) >= num_classes:
        raise ValueError(f"--num_classes {num_classes}: the class map names class {max(mapped)}")
    return MaskSpec(num_classes, pairs, colours, ignore_index)


def check_flags(*, tile: int, pair: str | None, num_classes: int | None, class_map: str | None,
                palette: str | None, ignore_index: int | None) -> tuple:
    """(pair as (OLD, NEW) or None, MaskSpec); ValueError naming the flag that cannot be used."""
    if tile < 0:
        raise ValueError(f"--tile: expected 0 (whole images) or a size in px, found {tile}")
    replace = None
    if pair:
        old, sep, new = pair.partition(":")
        if not sep or not old:
            raise ValueError(f"--pair: expected OLD:NEW, found {pair!r}")
        replace = (old, new)
    return replace, mask_spec(num_classes=num_classes, class_map=class_map, palette=palette,
                              ignore_index=ignore_index)


def convert(images_dir: str, masks_dir: str, output_dir: str, *, pair: str | None = None,
            bands: str | None = None, sensor: str | None = None, num_classes: int | None = None,
            class_map: str | None = None, palette: str | None = None,
            ignore_index: int | None = None, label_set: str = "segmentation", tile: int = 0,
            prefix: str = "train", num_shards: int = 4, num_workers=None,
            skip_bad: bool = False, verbose: bool = True) -> dict:
    """Converts every image under ``images_dir`` with its map; returns the write_shards summary."""
    for flag, folder in (("--images", images_dir), ("--masks", masks_dir)):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{flag} {folder}: not a folder")
    replace, spec = check_flags(tile=tile, pair=pair, num_classes=num_classes,
                                class_map=class_map, palette=palette, ignore_index=ignore_index)
    band_names = parse_bands(bands)
    sensor = sensor or PRESET_SENSORS.get(bands or "rgb", "unknown")
    images_dir, masks_dir = os.path.abspath(images_dir), os.path.abspath(masks_dir)
    load_pair.cache_clear()  # a pair cached by an earlier run in this process may have changed
    relpaths = find_images(images_dir)
    if not relpaths:
        raise FileNotFoundError(f"--images {images_dir}: no .tif/.png/.jpg images")
    items = tiling.list_windows(
        relpaths, lambda rel: tiling.image_size(os.path.join(images_dir, rel)), tile)
    make = functools.partial(make_record, images_dir=images_dir, masks_dir=masks_dir,
                             pair=replace, bands=band_names, spec=spec, sensor=sensor,
                             label_set=label_set, tile=tile)
    return write_shards(items, make, output_dir, prefix, num_shards=num_shards,
                        num_workers=num_workers, skip_bad=skip_bad, desc=f"segmentation {prefix}",
                        verbose=verbose,
                        extra_summary={"images": len(relpaths), "tile": tile,
                                       "num_classes": spec.num_classes, "label_set": label_set})


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m data_prep.segmentation_folders",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True, help="folder of images (any depth)")
    parser.add_argument("--masks", required=True,
                        help="folder of class maps at the images' relative paths")
    parser.add_argument("--pair", default=None,
                        help="OLD:NEW replaced in an image's relative path to name its map "
                             "(e.g. _s2_:_dfc_)")
    parser.add_argument("--bands", default=None,
                        help="channel names, comma-separated, or s2_l1c / s2_l2a / s1 / rgb "
                             "(default: grey or R,G,B)")
    parser.add_argument("--sensor", default=None,
                        help="sensor stored in each record (default: the --bands preset's; "
                             "rgb without --bands; 'unknown' for a band list)")
    parser.add_argument("--num_classes", type=int, default=None,
                        help="classes of the maps (default: from --class_map / --palette)")
    parser.add_argument("--class_map", default=None,
                        help="VALUE:CLASS,... source values to classes; other values -> 255")
    parser.add_argument("--palette", default=None,
                        help="R-G-B:CLASS,... for colour-coded maps, or isprs; other colours "
                             "-> 255")
    parser.add_argument("--ignore_index", type=int, default=None,
                        help="source map value meaning unlabelled (stored as 255)")
    parser.add_argument("--label_set", default="segmentation",
                        help="name of the class nomenclature stored in each record")
    parser.add_argument("--tile", type=int, default=0,
                        help="records of TILE x TILE px windows (0: one record per image)")
    add_writer_flags(parser, prefix="train", num_shards=4)
    args = parser.parse_args(argv)
    try:
        check_flags(tile=args.tile, pair=args.pair, num_classes=args.num_classes,
                    class_map=args.class_map, palette=args.palette,
                    ignore_index=args.ignore_index)
    except ValueError as e:
        parser.error(str(e))
    return convert(args.images, args.masks, args.output, pair=args.pair, bands=args.bands,
                   sensor=args.sensor, num_classes=args.num_classes, class_map=args.class_map,
                   palette=args.palette, ignore_index=args.ignore_index,
                   label_set=args.label_set, tile=args.tile, prefix=args.prefix,
                   num_shards=args.num_shards, num_workers=args.num_workers,
                   skip_bad=args.skip_bad)


if __name__ == "__main__":
    from data_prep.common import run_cli
    run_cli(main, "python -m data_prep.segmentation_folders")
