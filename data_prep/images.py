"""Shards from folders of JPEG / PNG / TIFF images (GeoPile's sources, RESISC45-like class folders).

    python -m data_prep.images --input /data/RESISC45,/data/PatternNet --output /data/geopile \
        [--masks /data/maps] [--prefix train --num_shards 16] [--center_crop 256 | --mixed_sizes] \
        [--convert_16bit=scale]

Each image becomes one record: ``image`` (1, H, W, C) (8-bit colour images: bands R, G, B,
sensor "rgb"; ``--bands`` names the channels of other TIFFs, stored in their dtype), ``key`` = the
input folder's name / the image's relative path. An image inside a sub-folder of an input folder
takes that sub-folder's name as its class: ``labels`` = [class index] over the sorted class names
of all inputs, ``num_classes``, ``label_set`` (``--label_set``, default the input folders' names
joined by "+"); the class list is in ``PREFIX.summary.json``. Images directly in an input folder
have no label. With ``--masks DIR``, the reference map at the image's relative path under DIR (any
of .png / .tif / .tiff) is stored as ``land_cover`` (1, H, W) uint8 (class index, 255 =
unlabelled), the layout of the synthetic data's maps. Records are written in a seeded random
order, so shards mix classes.

What is stored is what the configs read: bands R, G, B are 8-bit (the configs scale them by
1/255 and ImageNet's statistics). Every header is read before anything is written, and an image
that cannot be stored faithfully stops the run naming the file (``--skip_bad`` counts and skips
it instead), leaving the output folder as it was:

- Pillow modes become R, G, B by a stated rule, counted in the summary: grey (L, and 1/2/4-bit
  grey scaled to 0..255 by Pillow) and 1-bit → R = G = B; palette (P, PA) → its colours; LA,
  RGBA, PA → alpha dropped (not composited); CMYK → R = round((255 − C)(255 − K) / 255), G and B
  likewise (Pillow); JPEG YCbCr → R, G, B (Pillow). Other modes (32-bit I, F, ...) are refused.
- 16-bit images (PNG, uint16 TIFF) are refused: their range is unknown (full 0..65535, or 10-12-bit
  sensor counts that a division would crush). ``--convert_16bit=scale`` stores v // 256 (the high
  byte: an 8-bit value x stored as 257·x gives x back); ``--bands`` keeps a TIFF's values under
  other band names. Bands named R, G or B must be 8-bit whatever ``--bands`` says.
- One shard set holds one image size (the probes stack images): an image of another size than
  most is refused with its size and theirs. ``--center_crop S`` stores every image's central S×S
  (top-left corner at ((H − S) // 2, (W − S) // 2), the map cropped alike; smaller images are
  refused); ``--mixed_sizes`` keeps each size (pretraining crops them; the probes cannot use
  such a set).
- Non-image files and class folders without images are skipped, counted and named in the summary
  line (an empty class folder is no class). A map of another size, a map with values above 255
  or an image whose pixels do not decode (truncated) stop the run naming the file as well; the
  last two are found while writing, and the shards written so far are discarded (an earlier set
  in ``--output`` stays as it was).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import functools
import os
import random
from typing import NamedTuple

import numpy as np

from data_prep.common import BadInputError, add_writer_flags, positive_int, write_shards
from geossl.data import bands as bands_lib

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
MASK_EXTENSIONS = (".png", ".tif", ".tiff")
RGB_BANDS = bands_lib.RGB
STORED_DTYPES = ("uint8", "uint16", "int16", "float32")
#: Pillow modes that ``read_array`` turns into 8-bit R, G, B, with the rule (None: as stored).
COLOUR_RULES = {
    "RGB": None,
    "L": "grey → R = G = B",
    "1": "1-bit → R = G = B = 0 or 255",
    "P": "palette → its colours",
    "PA": "palette + alpha → its colours, alpha dropped",
    "LA": "grey + alpha → R = G = B, alpha dropped",
    "RGBA": "RGBA → R, G, B, alpha dropped",
    "CMYK": "CMYK → R = round((255 − C)(255 − K)/255), G and B likewise",
    "YCbCr": "YCbCr → R, G, B (Pillow)",
}
GREY_RULE = COLOUR_RULES["L"]
SCALE_16BIT = "16-bit → 8-bit: v // 256"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ----- reading -------------------------------------------------------------------------------------
def _is_tiff(path: str) -> bool:
    return path.lower().endswith((".tif", ".tiff"))


def planes_first(shape: tuple) -> bool:
    """Whether a TIFF's (A, B, C) array holds A channel planes (moved last): A is at most 16 and
    smaller than both other axes ((13, 64, 64) yes; (64, 64, 13), (16, 16, 20), (8, 16, 3) no)."""
    return len(shape) == 3 and shape[0] <= 16 and shape[0] < min(shape[1], shape[2])


def samples_order(shape: tuple, axes: str) -> tuple[int, int, int] | None:
    """The axes (Y, X, S) of a TIFF series with several samples per pixel (tifffile's axis
    letters: a single-page band stack as GDAL / rasterio write it, pixel- or band-interleaved)
    whose other axes are all 1: its layout is then known, whatever the sizes. None otherwise
    (pages stacked as bands, or one sample: :func:`planes_first` decides)."""
    if not set("YXS") <= set(axes) or any(n != 1 for a, n in zip(axes, shape) if a not in "YXS"):
        return None
    return axes.index("Y"), axes.index("X"), axes.index("S")


def tiff_axes(shape: tuple, axes: str) -> tuple[int, ...]:
    """The axes of a TIFF series of ``shape`` / ``axes`` that :func:`read_array` keeps, in its
    order: (Y, X, S) by :func:`samples_order`; else those longer than 1, leading channel planes
    (:func:`planes_first`) moved last."""
    order = samples_order(shape, axes)
    if order is not None:
        return order
    kept = tuple(i for i, n in enumerate(shape) if n != 1)
    return kept[1:] + kept[:1] if planes_first(tuple(shape[i] for i in kept)) else kept


def tiff_shape(shape: tuple, axes: str) -> tuple:
    """The (H, W) or (H, W, C) shape :func:`read_array` gives a TIFF series (:func:`tiff_axes`)."""
    return tuple(shape[i] for i in tiff_axes(shape, axes))


def read_array(path: str, *, colour: bool = True) -> np.ndarray:
    """An image file as (H, W) or (H, W, C): TIFF through tifffile (samples per pixel last, in
    either interleave; pages stacked as bands: up to 16 leading planes moved last; see
    :func:`tiff_axes`), JPEG / PNG through Pillow (with ``colour``, palette, grey+alpha, RGBA,
    CMYK become RGB; without, a palette image gives its indices). Raises BadInputError naming
    the file."""
    try:
        if _is_tiff(path):
            import tifffile
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                array, axes = series.asarray(), series.axes
            kept = tiff_axes(array.shape, axes)
            dropped = tuple(i for i in range(array.ndim) if i not in kept)  # all of length 1
            array = np.transpose(array, kept + dropped).reshape([array.shape[i] for i in kept])
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


def check_layout(channels: int, dtype: str, path: str, bands: tuple[str, ...] | None) -> tuple:
    """The band names of an image of ``channels`` channels of ``dtype``: without ``bands``, 1
    (grey, repeated) or 3 channels are R, G, B; other counts need ``bands``."""
    if bands is None:
        if channels not in (1, 3):
            raise BadInputError(f"{path}: {channels} channels; expected 1 (grey) or 3 (R, G, B), "
                                f"or name the {channels} channels with --bands")
        bands = RGB_BANDS
    elif channels != len(bands):
        raise BadInputError(f"{path}: {channels} channels but --bands names {len(bands)}: "
                            f"{list(bands)}")
    if dtype not in STORED_DTYPES:
        raise BadInputError(f"{path}: pixel type {dtype}; expected one of {STORED_DTYPES}")
    return tuple(bands)


def as_bands(array: np.ndarray, path: str, bands: tuple[str, ...] | None) -> tuple[np.ndarray, tuple]:
    """(H, W[, C]) → ((H, W, C) array, band names). Without ``bands``: grey → R, G, B repeated,
    3 channels → R, G, B; other counts need ``bands``."""
    if array.ndim == 2:
        array = array[..., None]
    names = check_layout(array.shape[-1], array.dtype.name, path, bands)
    if bands is None and array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array), names


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


# ----- headers ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Header:
    """An image file's header (no pixel decoded): its size, Pillow's mode ("TIFF" for tifffile),
    the bits per sample stored in the file, and the channels and dtype ``read_array`` returns."""

    height: int
    width: int
    mode: str
    bits: int
    channels: int
    dtype: str


def _png_bit_depth(path: str) -> int | None:
    """The bit depth of a PNG's IHDR chunk (Pillow hides 16-bit colour: it reads the high byte)."""
    with open(path, "rb") as f:
        head = f.read(25)
    if len(head) == 25 and head.startswith(PNG_SIGNATURE) and head[12:16] == b"IHDR":
        return head[24]
    return None


def _pillow_layout(mode: str) -> tuple[int, str] | None:
    """(channels, dtype) of ``read_array`` for a Pillow ``mode``, None for one it does not store."""
    if mode in COLOUR_RULES:
        return (1, "uint8") if mode == "L" else (3, "uint8")
    if mode.startswith("I;16"):
        return 1, "uint16"
    return None


def read_header(path: str) -> Header:
    """The :class:`Header` of an image file; BadInputError naming it when it does not open."""
    try:
        if _is_tiff(path):
            import tifffile
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, dtype = tiff_shape(series.shape, series.axes), np.dtype(series.dtype)
            if len(shape) not in (2, 3):
                raise BadInputError(f"{path}: expected an image (H, W) or (H, W, C), found shape "
                                    f"{series.shape}")
            channels = shape[2] if len(shape) == 3 else 1
            return Header(shape[0], shape[1], "TIFF", 8 * dtype.itemsize, channels, dtype.name)
        from PIL import Image
        with Image.open(path) as img:
            mode, (width, height) = img.mode, img.size
        layout = _pillow_layout(mode) or (0, "")
        bits = _png_bit_depth(path) or (16 if mode.startswith("I;16") else 8)
        return Header(height, width, mode, bits, *layout)
    except BadInputError:
        raise
    except Exception as e:  # noqa: BLE001 - image libraries raise many types for broken files
        raise BadInputError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None


#: The rule an image under bands R, G, B must meet.
EXPECTED_RGB = "expected 8-bit for bands R, G, B (the configs scale them by 1/255)"


def storage_rule(header: Header, path: str, bands: tuple[str, ...] | None,
                 convert_16bit: str | None) -> str | None:
    """How the image is stored: None (as it is) or the conversion rule, stated. BadInputError
    naming the file, what it holds and what is expected for what cannot be stored faithfully."""
    if header.mode != "TIFF" and not header.channels:
        raise BadInputError(f"{path}: Pillow mode {header.mode!r} ({header.bits}-bit); expected "
                            f"8-bit {', '.join(COLOUR_RULES)} or 16-bit grey (I;16)")
    names = check_layout(header.channels, header.dtype, path, bands)
    rules = [COLOUR_RULES.get(header.mode)]
    colour_png = header.bits == 16 and header.dtype == "uint8"  # Pillow read the high byte
    scalable = colour_png or header.dtype == "uint16"
    if scalable and convert_16bit == "scale":
        rules.insert(0, SCALE_16BIT)
    elif what := rgb_depth_problem(
            colour_png, header.dtype, header.channels, names, header.bits,
            "TIFF" if header.mode == "TIFF" else f"Pillow mode {header.mode}"):
        remedies = (["--convert_16bit=scale stores v // 256 (for values spanning 0..65535)"]
                    * scalable + ["--bands NAMES keeps the values under other band names"]
                    * (not colour_png))
        raise BadInputError(f"{path}: {what}; {EXPECTED_RGB}: " + ", or ".join(remedies))
    if bands is None and header.channels == 1 and header.mode != "L":  # TIFF, I;16
        rules.append(GREY_RULE)
    return ", ".join(r for r in rules if r) or None


def rgb_depth_problem(colour_png: bool, dtype, channels: int, names, bits: int,
                      source: str = "") -> str | None:
    """What keeps an image of bands ``names`` from being stored faithfully as 8-bit R, G, B (a
    16-bit colour PNG, of which Pillow kept the high byte; pixels other than uint8 under R, G or
    B), in words; None when nothing does. ``source``: how it was read (TIFF, a Pillow mode)."""
    if colour_png:
        return "a 16-bit colour PNG (Pillow reads only its high byte)"
    dtype = np.dtype(dtype)
    if not set(names) & set(RGB_BANDS) or dtype == np.uint8:
        return None
    return (f"{bits}-bit pixels ({dtype.name}, {channels} channel{'s' * (channels > 1)}"
            f"{', ' + source if source else ''})")


def check_8bit_rgb(path: str, dtype, channels: int, names) -> str | None:
    """For a decoded image (``read_array``) whose bands are ``names``: "PATH: what it holds;
    expected 8-bit for bands R, G, B (...)" when it cannot be stored faithfully as such
    (:func:`rgb_depth_problem`), else None. The caller adds its remedies."""
    dtype = np.dtype(dtype)
    what = rgb_depth_problem(_png_bit_depth(path) == 16 and dtype == np.uint8, dtype, channels,
                             names, 8 * dtype.itemsize)
    return None if what is None else f"{path}: {what}; {EXPECTED_RGB}"


# ----- listing ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Listing:
    """What an input folder holds: image paths, other files (relative, sorted; hidden files and
    folders left out) and top-level folders without any image (no class)."""

    images: list[str]
    other_files: list[str]
    empty_classes: list[str]


def scan(root: str) -> Listing:
    """The :class:`Listing` of ``root``."""
    images, others = [], []
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            rel = os.path.relpath(os.path.join(folder, name), root)
            (images if name.lower().endswith(IMAGE_EXTENSIONS) else others).append(rel)
    top = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    classes = {class_of(r) for r in images}
    return Listing(sorted(images), sorted(others), [d for d in top if d not in classes])


def find_images(root: str) -> list[str]:
    """Sorted relative paths of the images under ``root`` (hidden files and folders skipped)."""
    return scan(root).images


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


# ----- planning -----------------------------------------------------------------------------------
class Item(NamedTuple):
    """One image to store: where it is, its label (-1: none), its map, the storage rule, and why
    it cannot be stored (None when it can; with --skip_bad the record is skipped and counted)."""

    root: str
    relpath: str
    label: int
    mask: str | None
    size: tuple[int, int] = (0, 0)
    rule: str | None = None
    problem: str | None = None

    def __str__(self) -> str:  # the summary's list of skipped items names the file
        return os.path.join(self.root, self.relpath)


def _examine(item: Item, bands, convert_16bit, center_crop) -> Item:
    """``item`` with its size and storage rule from the headers, or the problem found."""
    path = os.path.join(item.root, item.relpath)
    try:
        header = read_header(path)
        size = (header.height, header.width)
        item = item._replace(size=size)  # counted among the sizes even if refused below
        rule = storage_rule(header, path, bands, convert_16bit)
        if center_crop and min(size) < center_crop:
            raise BadInputError(f"{path}: {size[0]}x{size[1]} pixels, smaller than --center_crop "
                                f"{center_crop}")
        if item.mask is not None:
            mask = read_header(item.mask)
            if (mask.height, mask.width) != size:
                raise BadInputError(f"{item.mask}: class map of size {(mask.height, mask.width)} "
                                    f"for an image of size {size}")
    except BadInputError as e:
        return item._replace(problem=str(e))
    return item._replace(rule=rule)


def _check_sizes(items: list[Item]) -> list[Item]:
    """Images of another size than the most common one (the larger of a tie) get a problem."""
    sizes = collections.Counter(it.size for it in items if it.size != (0, 0))
    if len(sizes) < 2:
        return items
    (h, w) = max(sizes, key=lambda size: (sizes[size], size))
    count = sizes[(h, w)]
    total = sum(sizes.values())

    def check(it: Item) -> Item:
        if it.problem is not None or it.size == (h, w):
            return it
        verb = "is" if count == 1 else "are"
        return it._replace(problem=(
            f"{os.path.join(it.root, it.relpath)}: {it.size[0]}x{it.size[1]} pixels, but {count} "
            f"of the {total} images {verb} {h}x{w}: one shard set holds one image size (the "
            f"probes stack them); --center_crop S stores every image's central SxS, --mixed_sizes "
            f"keeps each size (for pretraining only)"))
    return [check(it) for it in items]


def plan(items: list[Item], *, bands, convert_16bit, center_crop, mixed_sizes, skip_bad: bool,
         verbose: bool) -> list[Item]:
    """Every item examined from its headers (threads: the reads wait on the disk); the first
    problem raises BadInputError unless ``skip_bad``, before anything is written."""
    from tqdm import tqdm
    examine = functools.partial(_examine, bands=bands, convert_16bit=convert_16bit,
                                center_crop=center_crop)
    with concurrent.futures.ThreadPoolExecutor(min(16, 4 * (os.cpu_count() or 1))) as pool:
        items = list(tqdm(pool.map(examine, items, chunksize=64), total=len(items),
                          desc="headers", unit="img", disable=not verbose, delay=2))
    if not center_crop and not mixed_sizes:
        items = _check_sizes(items)
    problems = sorted((it for it in items if it.problem), key=lambda it: (it.root, it.relpath))
    if problems and not skip_bad:
        n = len(problems) - 1
        more = f" (and {n} more image{'s' * (n > 1)} refused)" if n else ""
        raise BadInputError(problems[0].problem + more)
    return items


# ----- records ------------------------------------------------------------------------------------
def _crop(array: np.ndarray, size: int | None) -> np.ndarray:
    """The central size×size of (H, W, ...): top-left corner ((H − size) // 2, (W − size) // 2)."""
    if not size:
        return array
    top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
    return array[top:top + size, left:left + size]


def make_record(item: Item, *, bands, sensor: str, label_set: str, num_classes: int,
                center_crop: int | None = None) -> dict:
    """One record from a planned :class:`Item` (its problem, if any, raised as BadInputError)."""
    if item.problem is not None:
        raise BadInputError(item.problem)
    path = os.path.join(item.root, item.relpath)
    array = read_array(path)
    if item.rule and item.rule.startswith(SCALE_16BIT) and array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    image, names = as_bands(array, path, bands)
    if set(names) & set(RGB_BANDS) and image.dtype != np.uint8:  # the file changed since planning
        raise BadInputError(f"{path}: pixel type {image.dtype}; expected 8-bit for bands R, G, B")
    record = {
        "image": np.ascontiguousarray(_crop(image, center_crop))[None],
        "bands": list(names),
        "sensor": sensor,
        "key": _key(item.root, item.relpath),
        "labels": np.array([item.label] if item.label >= 0 else [], np.int64),
        "label_set": label_set if item.label >= 0 else "",
    }
    if item.label >= 0:
        record["num_classes"] = np.array([num_classes], np.int64)
    if item.mask is not None:
        record["land_cover"] = np.ascontiguousarray(
            _crop(read_mask(item.mask, image.shape[:2])[0], center_crop))[None]
    return record


def _key(root: str, relpath: str) -> str:
    """The input folder's name / the relative path, with "/" (a record's key)."""
    return f"{os.path.basename(os.path.normpath(root))}/{relpath.replace(os.sep, '/')}"


def _named(paths: list[str], limit: int = 5) -> str:
    more = f", ... ({len(paths) - limit} more)" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


def report_line(summary: dict) -> str | None:
    """The summary's line of what was converted and what was skipped besides bad images."""
    parts = []
    converted = summary["converted"]
    if converted:
        parts.append(f"converted {sum(converted.values())} (" + "; ".join(
            f"{n} {rule}" for rule, n in sorted(converted.items())) + ")")
    if summary.get("center_cropped"):
        parts.append(f"center-cropped {summary['center_cropped']} to {summary['center_crop']}x"
                     f"{summary['center_crop']}")
    others, empty = summary["not_images"], summary["empty_class_folders"]
    skipped = []
    if others["count"]:
        skipped.append(f"{others['count']} non-image file{'s' * (others['count'] > 1)} "
                       f"({_named(others['files'])})")
    if empty:
        skipped.append(f"{len(empty)} empty class folder{'s' * (len(empty) > 1)} "
                       f"({_named(empty)}: no class)")
    if skipped:
        parts.append("skipped " + ", ".join(skipped))
    return f"{summary['prefix']}: " + "; ".join(parts) if parts else None


def convert(inputs, output_dir: str, *, masks: str | None = None, label_set: str | None = None,
            bands: tuple[str, ...] | None = None, sensor: str = "rgb", prefix: str = "train",
            num_shards: int = 16, num_workers=None, skip_bad: bool = False, seed: int = 0,
            convert_16bit: str | None = None, center_crop: int | None = None,
            mixed_sizes: bool = False, verbose: bool = True) -> dict:
    """Converts every image under the ``inputs`` folders; returns the write_shards summary (plus
    ``classes``, ``label_set``, ``images`` per input, ``masks`` found, ``converted`` {rule:
    count}, ``sizes`` {"HxW": count}, ``not_images`` and ``empty_class_folders``). Refusals
    (module docstring) raise BadInputError before the output folder is touched."""
    roots = [os.path.abspath(r) for r in inputs]
    for root in roots:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"--input {root}: not a folder")
    if masks and not os.path.isdir(masks):
        raise FileNotFoundError(f"--masks {masks}: not a folder")
    if convert_16bit not in (None, "scale"):
        raise ValueError(f"convert_16bit: expected None or 'scale', found {convert_16bit!r}")
    listed = {root: scan(root) for root in roots}
    for root, found in listed.items():
        if not found.images:
            others = (f" (found {len(found.other_files)} other files: "
                      f"{_named(found.other_files, 3)})")
            raise FileNotFoundError(f"--input {root}: no {'/'.join(IMAGE_EXTENSIONS)} images"
                                    + (others if found.other_files else ""))
    classes = sorted({c for found in listed.values() for c in map(class_of, found.images) if c})
    index = {c: i for i, c in enumerate(classes)}
    label_set = label_set or "+".join(os.path.basename(os.path.normpath(r)) for r in roots)
    items = []
    for root, found in listed.items():
        for rel in found.images:
            c = class_of(rel)
            items.append(Item(root, rel, index[c] if c else -1,
                              find_mask(masks, rel) if masks else None))
    random.Random(seed).shuffle(items)
    bands = tuple(bands) if bands else None
    items = plan(items, bands=bands, convert_16bit=convert_16bit, center_crop=center_crop,
                 mixed_sizes=mixed_sizes, skip_bad=skip_bad, verbose=verbose)
    stored = [it for it in items if it.problem is None]
    size_of = (lambda it: (center_crop, center_crop)) if center_crop else (lambda it: it.size)
    not_images = [_key(r, f) for r, found in listed.items() for f in found.other_files]
    extra = {"classes": classes, "label_set": label_set if classes else "",
             "images": {r: len(found.images) for r, found in listed.items()},
             "masks": sum(1 for it in items if it.mask),
             "converted": dict(collections.Counter(it.rule for it in stored if it.rule)),
             "sizes": {f"{h}x{w}": n for (h, w), n in
                       sorted(collections.Counter(map(size_of, stored)).items())},
             "not_images": {"count": len(not_images), "files": not_images[:100]},
             "empty_class_folders": [_key(r, d) for r, found in listed.items()
                                     for d in found.empty_classes]}
    if center_crop:
        extra.update(center_crop=center_crop,
                     center_cropped=sum(1 for it in stored if it.size != (center_crop,) * 2))
    make = functools.partial(make_record, bands=bands, sensor=sensor, label_set=label_set,
                             num_classes=len(classes), center_crop=center_crop)
    summary = write_shards(items, make, output_dir, prefix, num_shards=num_shards,
                           num_workers=num_workers, skip_bad=skip_bad, desc=f"images {prefix}",
                           verbose=verbose, extra_summary=extra)
    line = report_line(summary)
    if verbose and line:
        print(line)
    return summary


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
    parser.add_argument("--convert_16bit", choices=("scale",), default=None,
                        help="store 16-bit images as 8-bit v // 256 (default: refused by name)")
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--center_crop", type=positive_int, default=None, metavar="S",
                       help="store every image's central SxS (smaller images are refused)")
    sizes.add_argument("--mixed_sizes", action="store_true",
                       help="keep images of different sizes (pretraining only: the probes need "
                            "one size)")
    add_writer_flags(parser, prefix="train", num_shards=16)
    args = parser.parse_args(argv)
    if args.center_crop is not None and args.center_crop < 1:
        parser.error(f"--center_crop: expected a size >= 1, found {args.center_crop}")
    inputs = [p for p in (s.strip() for s in args.input.split(",")) if p]
    bands = tuple(b.strip() for b in args.bands.split(",")) if args.bands else None
    return convert(inputs, args.output, masks=args.masks, label_set=args.label_set, bands=bands,
                   sensor=args.sensor, prefix=args.prefix, num_shards=args.num_shards,
                   num_workers=args.num_workers, skip_bad=args.skip_bad, seed=args.seed,
                   convert_16bit=args.convert_16bit, center_crop=args.center_crop,
                   mixed_sizes=args.mixed_sizes)


if __name__ == "__main__":
    from data_prep.common import run_cli
    run_cli(main, "python -m data_prep.images")
