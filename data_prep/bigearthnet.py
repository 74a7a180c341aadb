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
Reference maps (``--reference_maps DIR``, BigEarthNet v2 ``Reference_Maps``): each record gets
``land_cover`` (1, 120, 120) uint8, the patch's per-pixel CORINE level-3 code (10 m) in the record's
nomenclature (``bigearthnet_19`` via the 43 -> 19 conversion, or ``bigearthnet_43``), 255 for a code
outside it (e.g. 122 roads, 335 glaciers in the 19 classes) or not a CLC code (no data); a map of
another size is resampled to the image grid by nearest neighbour (pixel centres). The map of patch
NAME is ``DIR/<tile>/NAME/NAME_reference_map.tif`` (v2 layout, <tile> = NAME without its last two
``_`` parts), ``DIR/NAME/NAME_reference_map.tif`` or ``DIR/NAME_reference_map.tif``; S1 patches use
their S2 pair's map. ``--reference_names CSV`` maps names first (rows ``patch_name,reference_name``,
e.g. v1 names to v2 patch ids from the v2 metadata's ``s2v1_name`` / ``patch_id`` columns).
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
# CORINE level-3 codes of LABELS_43, same order (335 "Glaciers and perpetual snow" is not in it).
CLC_CODES_43 = (111, 112, 121, 122, 123, 124, 131, 132, 133, 141, 142,
                211, 212, 213, 221, 222, 223, 231, 241, 242, 243, 244,
                311, 312, 313, 321, 322, 323, 324, 331, 332, 333, 334,
                411, 412, 421, 422, 423, 511, 512, 521, 522, 523)
UNLABELLED = 255

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


def clc_lookup(label_set: str) -> np.ndarray:
    """(1000,) uint8 table: CORINE code -> class index of ``label_set``, 255 elsewhere."""
    table = np.full(1000, UNLABELLED, np.uint8)
    for index, code in enumerate(CLC_CODES_43):
        if label_set == "bigearthnet_43":
            table[code] = index
        elif index in TO_19:
            table[code] = TO_19[index]
    return table


def remap_reference_map(codes: np.ndarray, label_set: str) -> np.ndarray:
    """CORINE codes (H, W), any integer dtype -> class indices (H, W) uint8, 255 outside."""
    codes = np.asarray(codes)
    if not np.issubdtype(codes.dtype, np.integer):
        raise BadInputError(f"reference map of dtype {codes.dtype}: expected integer CLC codes")
    table = clc_lookup(label_set)
    inside = (codes >= 0) & (codes < len(table))
    return np.where(inside, table[np.clip(codes, 0, len(table) - 1)], UNLABELLED).astype(np.uint8)


def resize_nearest(array: np.ndarray, size: int) -> np.ndarray:
    """(h, w) -> (size, size): the value at each output pixel centre (nearest neighbour)."""
    h, w = array.shape
    rows = np.minimum(((np.arange(size) + 0.5) * h / size).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size) + 0.5) * w / size).astype(np.int64), w - 1)
    return array[rows[:, None], cols[None, :]]


def reference_map_candidates(root: str, name: str) -> list[str]:
    """Where the reference map of patch ``name`` may be under ``root`` (v2 layout first)."""
    file = f"{name}_reference_map.tif"
    tile = name.rsplit("_", 2)[0]
    return [os.path.join(root, tile, name, file), os.path.join(root, name, file),
            os.path.join(root, file)]


def read_land_cover(root: str, name: str, label_set: str, size: int = SIZE) -> np.ndarray:
    """The patch's reference map as ``land_cover`` (1, size, size) uint8 in ``label_set``."""
    candidates = reference_map_candidates(root, name)
    path = next((p for p in candidates if os.path.isfile(p)), None)
    if path is None:
        raise BadInputError(f"{name}: no reference map; looked for " + ", ".join(candidates))
    codes = read_band(path)
    try:
        classes = remap_reference_map(codes, label_set)
    except BadInputError as e:
        raise BadInputError(f"{path}: {e}") from None
    if classes.shape != (size, size):
        classes = resize_nearest(classes, size)
    return classes[None]


def read_name_map(path: str) -> dict[str, str]:
    """``patch_name,reference_name`` rows of a CSV (optionally .bz2) -> {patch_name: reference}."""
    opener = bz2.open if path.endswith(".bz2") else open
    mapping = {}
    with opener(path, "rt") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = [v.strip() for v in line.split(",")]
            if len(fields) < 2 or not fields[1]:
                raise BadInputError(f"{path}:{number}: expected 'patch_name,reference_name', "
                                    f"found {line.strip()!r}")
            mapping[fields[0]] = fields[1]
    return mapping


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


def make_patch(folder: str, *, modality: str, label_set: str, reference_maps: str | None = None,
               reference_names: dict | None = None) -> dict:
    """One patch folder -> record dict (image (1, 120, 120, C)[, land_cover (1, 120, 120)])."""
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
    if reference_maps:
        if modality == "s1" and "pair_key" not in record:
            raise BadInputError(f"{meta_path}: an S1 patch without 'corresponding_s2_patch' has "
                                f"no reference map")
        map_name = record["pair_key"] if modality == "s1" else name
        map_name = (reference_names or {}).get(map_name, map_name)
        record["land_cover"] = read_land_cover(reference_maps, map_name, label_set)
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
            reference_maps: str | None = None, reference_names: str | None = None,
            verbose: bool = True) -> dict:
    """Converts every patch under ``input_dir``; returns the write_shards summary.
    ``reference_maps``: a Reference_Maps folder (module docstring); ``reference_names``: a CSV
    of ``patch_name,reference_name`` rows."""
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
    if reference_maps and not os.path.isdir(reference_maps):
        raise FileNotFoundError(f"--reference_maps {reference_maps}: not a folder")
    if reference_names and not reference_maps:
        raise ValueError("--reference_names needs --reference_maps")
    make = functools.partial(make_patch, modality=modality, label_set=label_set,
                             reference_maps=reference_maps,
                             reference_names=read_name_map(reference_names)
                             if reference_names else None)
    return write_shards(folders, make, output_dir, prefix, num_shards=num_shards,
                        num_workers=num_workers, skip_bad=skip_bad,
                        desc=f"bigearthnet {modality}", verbose=verbose,
                        extra_summary={"modality": modality, "label_set": label_set,
                                       "found": listed, "filtered_out": listed - len(folders),
                                       "reference_maps": reference_maps})


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m data_prep.bigearthnet",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="folder tree of BigEarthNet patches")
    parser.add_argument("--modality", default="auto", choices=("auto", "s2", "s1"))
    parser.add_argument("--label_set", default="19", choices=("19", "43"))
    parser.add_argument("--names", default=None, help="only these patches (CSV, first column)")
    parser.add_argument("--exclude", action="append", default=[],
                        help="drop these patches (CSV, first column); repeatable")
    parser.add_argument("--reference_maps", default=None,
                        help="BigEarthNet v2 Reference_Maps folder: adds each patch's per-pixel "
                             "class map as 'land_cover'")
    parser.add_argument("--reference_names", default=None,
                        help="CSV of 'patch_name,reference_name' rows mapping patch names to "
                             "reference-map names (e.g. v1 names to v2 patch ids)")
    add_writer_flags(parser, prefix="bigearthnet", num_shards=16)
    args = parser.parse_args(argv)
    return convert(args.input, args.output, modality=args.modality, label_set=args.label_set,
                   prefix=args.prefix, num_shards=args.num_shards, num_workers=args.num_workers,
                   skip_bad=args.skip_bad, names=args.names, exclude=args.exclude,
                   reference_maps=args.reference_maps, reference_names=args.reference_names)


if __name__ == "__main__":
    from data_prep.common import run_cli
    run_cli(main, "python -m data_prep.bigearthnet")
