"""BigEarthNet v1 patch folders -> TFRecord shards.

    python -m data_prep.bigearthnet --input DIR --output DIR [--modality auto|s2|s1
        --label_set 19|43 --num_shards 16 --skip_bad --names split.csv --exclude noisy.csv]

Input: any folder tree holding BigEarthNet patch folders NAME/ with NAME_labels_metadata.json.
- S2 (L2A): NAME_B01.tif ... NAME_B12.tif, 12 bands (no B10), uint16 at 120/60/20 px for
  10/20/60 m. Every band goes onto the 10 m grid (120 x 120) by pixel repetition: no value is
  interpolated, so the 10 m bands stay bit-exact and the coarse bands keep their measured values
  (smoothing is left to the model pipeline). Stored as sensor "s2_l2a", bands B1 B2 B3 B4 B5 B6
  B7 B8 B8A B9 B11 B12 (the pipeline inserts B10 for 13-band models), image (1, 120, 120, 12).
- S1: NAME_VV.tif, NAME_VH.tif float32 dB -> sensor "s1_grd", bands VV VH, (1, 120, 120, 2);
  extra feature "pair_key" = the matching S2 patch name.
Labels: the CORINE names of the metadata file -> indices of the 43 classes in the original
BigEarthNet order ("bigearthnet_43"), or via the standard 43 -> 19 conversion ("bigearthnet_19";
a patch whose classes all drop out gets an empty label list). Extra feature "acquisition_date".
``--names`` / ``--exclude``: files of patch folder names (first CSV column, .bz2 allowed), e.g. the
official train/val/test splits and the cloud/snow lists.
"""

from __future__ import annotations

import argparse
import bz2
import functools
import json
import os

import numpy as np

from data_prep.common import (BadInputError, add_writer_flags, read_band, stack_bands,
                              upsample_to, write_shards)

# The 43 CORINE level-3 classes in BigEarthNet's original label order.
LABELS_43 = (
    "Continuous urban fabric", "Discontinuous urban fabric", "Industrial or commercial units",
    "Road and rail networks and associated land", "Port areas", "Airports",
    "Mineral extraction sites", "Dump sites", "Construction sites", "Green urban areas",
    "Sport and leisure facilities", "Non-irrigated arable land", "Permanently irrigated land",
    "Rice fields", "Vineyards", "Fruit trees and berry plantations", "Olive groves", "Pastures",
    "Annual crops associated with permanent crops", "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest",
    "Natural grassland", "Moors and heathland", "Sclerophyllous vegetation",
    "Transitional woodland/shrub", "Beaches, dunes, sands", "Bare rock",
    "Sparsely vegetated areas", "Burnt areas", "Inland marshes", "Peatbogs", "Salt marshes",
    "Salines", "Intertidal flats", "Water courses", "Water bodies", "Coastal lagoons",
    "Estuaries", "Sea and ocean",
)
# The 19-class nomenclature (original order) and the 43-class indices merged into each class.
LABELS_19 = (
    ("Urban fabric", (0, 1)),
    ("Industrial or commercial units", (2,)),
    ("Arable land", (11, 12, 13)),
    ("Permanent crops", (14, 15, 16, 18)),
    ("Pastures", (17,)),
    ("Complex cultivation patterns", (19,)),
    ("Land principally occupied by agriculture, with significant areas of natural vegetation",
     (20,)),
    ("Agro-forestry areas", (21,)),
    ("Broad-leaved forest", (22,)),
    ("Coniferous forest", (23,)),
    ("Mixed forest", (24,)),
    ("Natural grassland and sparsely vegetated areas", (25, 31)),
    ("Moors, heathland and sclerophyllous vegetation", (26, 27)),
    ("Transitional woodland, shrub", (28,)),
    ("Beaches, dunes, sands", (29,)),
    ("Inland wetlands", (33, 34)),
    ("Coastal wetlands", (35, 36)),
    ("Inland waters", (38, 39)),
    ("Marine waters", (40, 41, 42)),
)
INDEX_43 = {name: i for i, name in enumerate(LABELS_43)}
TO_19 = {old: new for new, (_, olds) in enumerate(LABELS_19) for old in olds}

S2_FILE_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11",
                 "B12")
S2_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12")
S2_SIZES = {"B01": 20, "B09": 20, "B05": 60, "B06": 60, "B07": 60, "B8A": 60, "B11": 60,
            "B12": 60}  # every other band: 120
S1_BANDS = ("VV", "VH")
SIZE = 120


def label_indices(names, label_set: str, where: str) -> np.ndarray:
    """CORINE class names -> sorted indices in "bigearthnet_43" or "bigearthnet_19"."""
    if not isinstance(names, list):
        raise BadInputError(f"{where}: 'labels' must be a list of class names, found {names!r}")
    unknown = [n for n in names if n not in INDEX_43]
    if unknown:
        raise BadInputError(f"{where}: unknown BigEarthNet class name(s) {unknown}")
    old = {INDEX_43[n] for n in names}
    if label_set == "bigearthnet_43":
        return np.array(sorted(old), np.int64)
    return np.array(sorted({TO_19[i] for i in old if i in TO_19}), np.int64)


def detect_modality(folder: str) -> str:
    name = os.path.basename(os.path.normpath(folder))
    if os.path.isfile(os.path.join(folder, f"{name}_VV.tif")):
        return "s1"
    if os.path.isfile(os.path.join(folder, f"{name}_B02.tif")):
        return "s2"
    raise BadInputError(f"{folder}: neither {name}_B02.tif (S2) nor {name}_VV.tif (S1) found")


def _read_metadata(folder: str, name: str) -> dict:
    path = os.path.join(folder, f"{name}_labels_metadata.json")
    if not os.path.isfile(path):
        raise BadInputError(f"{path}: missing labels metadata file")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise BadInputError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(meta, dict) or "labels" not in meta:
        raise BadInputError(f"{path}: no 'labels' entry")
    return meta


def make_patch(folder: str, *, modality: str, label_set: str) -> dict:
    """One patch folder -> record dict (image (1, 120, 120, C))."""
    name = os.path.basename(os.path.normpath(folder))
    found = detect_modality(folder)
    if found != modality:
        raise BadInputError(f"{folder}: looks like a {found.upper()} patch, expected "
                            f"{modality.upper()}")
    meta = _read_metadata(folder, name)
    meta_path = os.path.join(folder, f"{name}_labels_metadata.json")
    file_bands = S2_FILE_BANDS if modality == "s2" else S1_BANDS
    paths = [os.path.join(folder, f"{name}_{band}.tif") for band in file_bands]
    arrays = []
    for band, path in zip(file_bands, paths):
        array = read_band(path)
        expected = S2_SIZES.get(band, SIZE) if modality == "s2" else SIZE
        if array.shape != (expected, expected):
            raise BadInputError(f"{path}: expected {expected}x{expected} pixels for {band}, "
                                f"found {array.shape[0]}x{array.shape[1]}")
        arrays.append(upsample_to(array, SIZE, path))
    image = stack_bands(arrays, paths)
    want = np.uint16 if modality == "s2" else np.float32
    if image.dtype != want:
        raise BadInputError(f"{folder}: expected {np.dtype(want).name} bands, found {image.dtype}")
    record = {
        "image": image[None],
        "bands": list(S2_BANDS if modality == "s2" else S1_BANDS),
        "sensor": "s2_l2a" if modality == "s2" else "s1_grd",
        "key": name,
        "labels": label_indices(meta["labels"], label_set, meta_path),
        "label_set": label_set,
    }
    date = meta.get("acquisition_date") or meta.get("acquisition_time")
    if date:
        record["acquisition_date"] = str(date)
    if modality == "s1" and meta.get("corresponding_s2_patch"):
        record["pair_key"] = str(meta["corresponding_s2_patch"])
    return record


def find_patches(root: str) -> list[str]:
    """Sorted patch folders (those holding NAME_labels_metadata.json) under ``root``."""
    found = []
    for folder, subdirs, files in os.walk(root):
        name = os.path.basename(os.path.normpath(folder))
        if f"{name}_labels_metadata.json" in files:
            found.append(folder)
            subdirs[:] = []
        else:
            subdirs.sort()
    return sorted(found, key=lambda p: os.path.basename(os.path.normpath(p)))


def read_name_list(path: str) -> set[str]:
    """Patch names from the first column of a CSV / text file (optionally .bz2)."""
    opener = bz2.open if path.endswith(".bz2") else open
    with opener(path, "rt") as f:
        return {line.split(",")[0].strip() for line in f if line.strip()}


def convert(input_dir: str, output_dir: str, *, modality: str = "auto", label_set: str = "19",
            prefix: str = "bigearthnet", num_shards: int = 16, num_workers=None,
            skip_bad: bool = False, names: str | None = None, exclude=(),
            verbose: bool = True) -> dict:
    """Converts every patch under ``input_dir``; returns the write_shards summary."""
    label_set = f"bigearthnet_{label_set}" if not str(label_set).startswith("bigearthnet_") \
        else label_set
    if label_set not in ("bigearthnet_19", "bigearthnet_43"):
        raise ValueError(f"label_set must be 19 or 43, found {label_set!r}")
    folders = find_patches(input_dir)
    if not folders:
        raise FileNotFoundError(f"{input_dir}: no BigEarthNet patch folders "
                                f"(NAME/NAME_labels_metadata.json) found")
    listed = len(folders)
    if names:
        keep = read_name_list(names)
        folders = [f for f in folders if os.path.basename(os.path.normpath(f)) in keep]
    for path in exclude or ():
        drop = read_name_list(path)
        folders = [f for f in folders if os.path.basename(os.path.normpath(f)) not in drop]
    if modality == "auto":
        modality = detect_modality(folders[0]) if folders else "s2"
    if modality not in ("s1", "s2"):
        raise ValueError(f"modality must be auto, s1 or s2, found {modality!r}")
    make = functools.partial(make_patch, modality=modality, label_set=label_set)
    return write_shards(folders, make, output_dir, prefix, num_shards=num_shards,
                        num_workers=num_workers, skip_bad=skip_bad,
                        desc=f"bigearthnet {modality}", verbose=verbose,
                        extra_summary={"modality": modality, "label_set": label_set,
                                       "found": listed, "filtered_out": listed - len(folders)})


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m data_prep.bigearthnet",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="folder tree of BigEarthNet patches")
    parser.add_argument("--modality", default="auto", choices=("auto", "s2", "s1"))
    parser.add_argument("--label_set", default="19", choices=("19", "43"))
    parser.add_argument("--names", default=None, help="only these patches (CSV, first column)")
    parser.add_argument("--exclude", action="append", default=[],
                        help="drop these patches (CSV, first column); repeatable")
    add_writer_flags(parser, prefix="bigearthnet", num_shards=16)
    args = parser.parse_args(argv)
    return convert(args.input, args.output, modality=args.modality, label_set=args.label_set,
                   prefix=args.prefix, num_shards=args.num_shards, num_workers=args.num_workers,
                   skip_bad=args.skip_bad, names=args.names, exclude=args.exclude)


if __name__ == "__main__":
    main()
