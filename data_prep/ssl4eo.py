"""SSL4EO-S12 GeoTIFF folders -> TFRecord shards, one record per location (all its seasons).

    python -m data_prep.ssl4eo --input DIR --output DIR [--modality s2c|s2a|s1
        --labels ssl4eo_multilabel.json --num_shards 64 --seasons 4 --skip_bad]

Input layout (the raw SSL4EO-S12 release): DIR/{s1,s2a,s2c}/{location_id}/{timestamp}/{band}.tif
with band files B1 ... B12 incl. B8A (s2c: 13 L1C bands, s2a: 12 L2A bands without B10) or VV, VH
(s1). The timestamp folders are named by the Earth Engine ``system:index`` of the downloaded
image: "20200311T095029_20200311T095444_T33SWB" for Sentinel-2 (datatake time, granule time,
tile), the S1 product name for Sentinel-1. Acquisitions are ordered by the first date-time in
their folder name. Bands are stored in that order (REFERENCE.md §2) on the 10 m grid of S x S
pixels (S = the size of B2 / VV, or --size): a band stored at its native resolution (S/2 for
20 m, S/6 for 60 m bands) is repeated 2 x 2 or 6 x 6, which keeps every value exact.

Labels (SSL4EO-S12-ML): JSON {location_id: {S2_product_id: ["0", "4", ...]}} of Dynamic World
classes (0 water ... 8 snow & ice). Location ids match exactly or as integers ("0000042" = "42").
An acquisition gets the classes of the product whose id equals its folder name, or else whose
(first date-time, tile) pair equals the folder's; e.g. product "S2B_MSIL1C_20200311T095029_N0209_
R079_T33SWB_20200311T115208" matches folder "20200311T095029_20200311T095444_T33SWB" (Dynamic
World images carry the system:index of their S2 L1C image). An unmatched acquisition stays
unlabelled; a location none of whose acquisitions match is a bad input. For s1 folders (no S2
id) ``labels`` is the union over the location's products and ``acq_labels`` is left out.
Stored: ``labels`` (union), ``acq_labels`` (T*9 multi-hot), ``num_classes`` [9], ``timestamps``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re

import numpy as np

from data_prep.common import (BadInputError, add_writer_flags, read_band, stack_bands,
                              upsample_to, write_shards)
from geossl.data.codec import IMAGE_DTYPES

BANDS = {
    "s2c": ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"),
    "s2a": ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12"),
    "s1": ("VV", "VH"),
}
RESOLUTION_M = {"B1": 60, "B2": 10, "B3": 10, "B4": 10, "B5": 20, "B6": 20, "B7": 20, "B8": 10,
                "B8A": 20, "B9": 60, "B10": 60, "B11": 20, "B12": 20, "VV": 10, "VH": 10}
REFERENCE_BAND = {False: "B2", True: "VV"}  # sets the 10 m grid size unless --size is given
SENSORS = {"s2c": "s2_l1c", "s2a": "s2_l2a", "s1": "s1_grd"}
NUM_CLASSES = 9
LABEL_SET = "dynamic_world_9"
_DATETIME = re.compile(r"(\d{8}T\d{6})")
_TILE = re.compile(r"(?:^|_)(T\d{2}[A-Z]{3})(?:_|$)")


def _product_key(name: str):
    """(first date-time, tile) of an S2 product id or system:index, or None."""
    when, tile = _DATETIME.search(name), _TILE.search(name)
    return (when.group(1), tile.group(1)) if when and tile else None


def _acquisition_order(name: str):
    when = _DATETIME.search(name)
    return (when.group(1) if when else "", name)


def _class_indices(values, where: str) -> set[int]:
    if not isinstance(values, list):
        raise BadInputError(f"{where}: expected a list of class ids, found {values!r}")
    out = set()
    for v in values:
        try:
            k = int(v)
        except (TypeError, ValueError):
            raise BadInputError(f"{where}: class id {v!r} is not an integer") from None
        if not 0 <= k < NUM_CLASSES:
            raise BadInputError(f"{where}: class id {k} outside [0, {NUM_CLASSES})")
        out.add(k)
    return out


def load_labels(path: str) -> dict:
    """The SSL4EO-S12-ML JSON table {location_id: {product_id: [class ids]}}."""
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable label JSON ({e})") from None
    if not isinstance(table, dict):
        raise ValueError(f"{path}: expected an object {{location_id: {{product_id: [...]}}}}")
    return table


def _location_entry(labels_path: str, location: str, folder: str) -> dict:
    table, by_number = _labels_table(labels_path)
    key = location if location in table else (
        by_number.get(int(location)) if location.isdigit() else None)
    if key is None:
        raise BadInputError(f"{labels_path}: no entry for location {location!r} ({folder})")
    entry = table[key]
    if not isinstance(entry, dict):
        raise BadInputError(f"{labels_path}: entry of location {location!r} must map product "
                            f"ids to class lists, found {type(entry).__name__}")
    return entry


def _acquisition_labels(entry: dict, timestamps, labels_path: str, location: str):
    """(T, 9) multi-hot from the products matched to each timestamp folder."""
    by_key = {}
    for product in entry:
        key = _product_key(product)
        if key is not None:
            by_key.setdefault(key, product)
    acq = np.zeros((len(timestamps), NUM_CLASSES), np.int64)
    matched = 0
    for t, name in enumerate(timestamps):
        product = name if name in entry else by_key.get(_product_key(name) or ("", ""))
        if product is None:
            continue
        matched += 1
        where = f"{labels_path}: location {location!r} product {product!r}"
        acq[t, sorted(_class_indices(entry[product], where))] = 1
    if entry and not matched:
        raise BadInputError(
            f"{labels_path}: location {location!r}: none of its acquisitions {list(timestamps)} "
            f"matches a product id {sorted(entry)[:4]}")
    return acq


def _read_acquisition(folder: str, bands, size: int | None) -> np.ndarray:
    """(S, S, C): every band at S or at its native size S * 10 / resolution, repeated to S."""
    paths = [os.path.join(folder, f"{band}.tif") for band in bands]
    arrays = [read_band(p) for p in paths]
    target = size or arrays[bands.index(REFERENCE_BAND[bands[0] == "VV"])].shape[0]
    for band, array, path in zip(bands, arrays, paths):
        allowed = {target}
        if (target * 10) % RESOLUTION_M[band] == 0:
            allowed.add(target * 10 // RESOLUTION_M[band])
        if array.shape[0] != array.shape[1] or array.shape[0] not in allowed:
            raise BadInputError(
                f"{path}: {array.shape[0]}x{array.shape[1]} pixels, expected "
                f"{' or '.join(f'{a}x{a}' for a in sorted(allowed, reverse=True))} (a "
                f"{RESOLUTION_M[band]} m band on the {target}-pixel 10 m grid)")
    image = stack_bands([upsample_to(a, target, p) for a, p in zip(arrays, paths)], paths)
    if image.dtype.name not in IMAGE_DTYPES:
        raise BadInputError(f"{folder}: band dtype {image.dtype} is not one of {IMAGE_DTYPES}")
    return image


def make_location(folder: str, *, modality: str, labels_path: str | None = None,
                  seasons: int | None = None, size: int | None = None) -> dict:
    """One location folder -> record dict with image (T, S, S, C)."""
    location = os.path.basename(os.path.normpath(folder))
    if not os.path.isdir(folder):
        raise BadInputError(f"{folder}: location folder not found")
    timestamps = sorted((d for d in os.listdir(folder)
                         if os.path.isdir(os.path.join(folder, d))), key=_acquisition_order)
    if not timestamps:
        raise BadInputError(f"{folder}: no acquisition folders")
    if seasons is not None and len(timestamps) != seasons:
        raise BadInputError(f"{folder}: expected {seasons} acquisitions, found "
                            f"{len(timestamps)} {timestamps}")
    images = [_read_acquisition(os.path.join(folder, t), BANDS[modality], size)
              for t in timestamps]
    for t, image in zip(timestamps, images):
        if image.shape != images[0].shape or image.dtype != images[0].dtype:
            raise BadInputError(
                f"{os.path.join(folder, t)}: acquisition is {image.shape} {image.dtype}, the "
                f"first ({timestamps[0]}) is {images[0].shape} {images[0].dtype}")
    record = {
        "image": np.stack(images),
        "bands": list(BANDS[modality]),
        "sensor": SENSORS[modality],
        "key": location,
        "labels": np.zeros((0,), np.int64),
        "label_set": "none",
        "timestamps": list(timestamps),
    }
    if labels_path is not None:
        entry = _location_entry(labels_path, location, folder)
        record["label_set"] = LABEL_SET
        if modality == "s1":
            union = set()
            for product, values in entry.items():
                union |= _class_indices(values, f"{labels_path}: location {location!r} "
                                                f"product {product!r}")
            record["labels"] = np.array(sorted(union), np.int64)
        else:
            acq = _acquisition_labels(entry, timestamps, labels_path, location)
            record["labels"] = np.flatnonzero(acq.any(axis=0)).astype(np.int64)
            record["acq_labels"] = acq.ravel()
            record["num_classes"] = np.array([NUM_CLASSES], np.int64)
    return record


@functools.lru_cache(maxsize=2)
def _labels_table(path: str):
    """(table, {int(location_id): location_id}), loaded once per worker process."""
    table = load_labels(path)
    return table, {int(k): k for k in table if k.isdigit()}


def convert(input_dir: str, output_dir: str, *, modality: str = "s2c",
            labels: str | None = None, prefix: str | None = None, num_shards: int = 64,
            num_workers=None, skip_bad: bool = False, seasons: int | None = None,
            size: int | None = None, verbose: bool = True) -> dict:
    """Converts every location of ``input_dir/modality``; returns the write_shards summary."""
    if modality not in BANDS:
        raise ValueError(f"modality must be one of {sorted(BANDS)}, found {modality!r}")
    root = os.path.join(input_dir, modality)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: not found (expected {input_dir}/{modality}/"
                                f"<location>/<timestamp>/<band>.tif)")
    if labels is not None:
        load_labels(labels)  # fail early on an unreadable file
    folders = [os.path.join(root, d) for d in sorted(os.listdir(root))
               if os.path.isdir(os.path.join(root, d))]
    make = functools.partial(make_location, modality=modality, labels_path=labels,
                             seasons=seasons, size=size)
    return write_shards(folders, make, output_dir, prefix or f"ssl4eo_{modality}",
                        num_shards=num_shards, num_workers=num_workers, skip_bad=skip_bad,
                        desc=f"ssl4eo {modality}", verbose=verbose,
                        extra_summary={"modality": modality, "labels": labels})


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m data_prep.ssl4eo",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="folder holding s1/ s2a/ s2c/")
    parser.add_argument("--modality", default="s2c", choices=sorted(BANDS))
    parser.add_argument("--labels", default=None, help="ssl4eo_multilabel.json")
    parser.add_argument("--seasons", type=int, default=None,
                        help="require exactly this many acquisitions per location")
    parser.add_argument("--size", type=int, default=None,
                        help="10 m grid size in pixels (default: the size of B2 or VV)")
    add_writer_flags(parser, prefix=None, num_shards=64)
    args = parser.parse_args(argv)
    return convert(args.input, args.output, modality=args.modality, labels=args.labels,
                   prefix=args.prefix, num_shards=args.num_shards, num_workers=args.num_workers,
                   skip_bad=args.skip_bad, seasons=args.seasons, size=args.size)


if __name__ == "__main__":
    from data_prep.common import run_cli
    run_cli(main, "python -m data_prep.ssl4eo")
