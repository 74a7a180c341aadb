"""EuroSAT-MS (13-band GeoTIFFs in class folders) -> TFRecord shards.

    python -m data_prep.eurosat --input /data/EuroSAT_MS --output /data/eurosat \
        [--splits /data/eurosat-splits --num_shards 8]

Input: a folder tree holding the ten class folders AnnualCrop, Forest, HerbaceousVegetation,
Highway, Industrial, Pasture, PermanentCrop, Residential, River, SeaLake (the ``EuroSAT_MS/``
folder, or the ``ds/images/remote_sensing/otherDatasets/sentinel_2/tif/`` folder of torchgeo's
``EuroSATallBands.zip``; the first folder under ``--input`` that holds them is used), each with
``<Class>_<n>.tif``: 13 bands of 64 x 64 px, uint16 Sentinel-2 L1C digital numbers. The bands are
stored in the files' order B1 B2 B3 B4 B5 B6 B7 B8 B9 B10 B11 B12 B8A (B8A last: EuroSAT issue 7,
torchgeo issue 2458 / PR 2480; records name their bands, so readers pick them by name).

Each image is one record: ``image`` (1, 64, 64, 13) uint16, sensor "s2_l1c", ``labels`` =
[class index] in the order above (torchgeo's, alphabetical), ``label_set`` "eurosat_10",
``num_classes`` 10, ``key`` "<Class>/<Class>_<n>". Records are written in a seeded random order.

Splits (``--splits DIR``): the files ``eurosat-train.txt``, ``eurosat-val.txt`` and
``eurosat-test.txt`` (torchgeo's lists of the "In-domain representation learning for remote
sensing" splits: one file name a line, ``.jpg`` names of the RGB release allowed) give the shard
sets ``train``, ``val`` and ``test``; an image in no list is left out (counted). Without
``--splits`` every image goes into one set named ``--prefix`` (default ``all``). A listed name
without an image stops the run naming it before anything is written (``--skip_bad`` counts it
instead), as does a file with another band count, pixel type or size than 64 x 64 px. A refused
run leaves the output folder as it was.
"""

from __future__ import annotations

import argparse
import os
import random

import numpy as np

from data_prep.common import BadInputError, add_writer_flags, channels_last, write_shards
from data_prep.images import read_array
from geossl.data.parallel_writer import committed_together

CLASSES = ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
           "PermanentCrop", "Residential", "River", "SeaLake")
BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11", "B12", "B8A")
LABEL_SET = "eurosat_10"
SIZE = 64
SPLITS = ("train", "val", "test")
SPLIT_FILE = "eurosat-{}.txt"
EXTENSIONS = (".tif", ".tiff")


def find_class_root(root: str) -> str:
    """The first folder under ``root`` (breadth-first, sorted) holding a class folder; it must
    hold all ten."""
    queue = [root]
    while queue:
        folder = queue.pop(0)
        subdirs = sorted(d for d in os.listdir(folder)
                         if not d.startswith(".") and os.path.isdir(os.path.join(folder, d)))
        if set(subdirs) & set(CLASSES):
            missing = [c for c in CLASSES if c not in subdirs]
            if missing:
                raise FileNotFoundError(f"{folder}: EuroSAT class folder(s) {missing} missing; "
                                        f"expected all of {list(CLASSES)}")
            return folder
        queue.extend(os.path.join(folder, d) for d in subdirs)
    raise FileNotFoundError(f"--input {root}: no EuroSAT class folders ({', '.join(CLASSES)}) "
                            f"found")


def list_images(class_root: str) -> dict[str, tuple[str, int]]:
    """{file stem: (path, class index)} of every GeoTIFF in the class folders."""
    found = {}
    for index, name in enumerate(CLASSES):
        folder = os.path.join(class_root, name)
        for file in sorted(os.listdir(folder)):
            if file.lower().endswith(EXTENSIONS) and not file.startswith("."):
                found[os.path.splitext(file)[0]] = (os.path.join(folder, file), index)
    return found


def read_split_names(path: str) -> list[str]:
    """File stems listed in a split file (one name a line; extension dropped)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing split file")
    with open(path) as f:
        return [os.path.splitext(os.path.basename(line.strip()))[0] for line in f if line.strip()]


def make_record(item) -> dict:
    """One record from ``(path, class index)``, or ``(stem, None)`` for a listed missing image."""
    path, label = item
    if label is None:
        raise BadInputError(f"{path}: listed in a split file but no {path}.tif in the class "
                            f"folders")
    image = channels_last(read_array(path, colour=False), len(BANDS))
    channels = image.shape[-1] if image.ndim == 3 else 1
    if channels != len(BANDS):
        raise BadInputError(f"{path}: expected {len(BANDS)} bands ({' '.join(BANDS)}), found "
                            f"{channels} (shape {image.shape})")
    if image.dtype != np.uint16:
        raise BadInputError(f"{path}: expected uint16 digital numbers, found {image.dtype}")
    if image.shape[:2] != (SIZE, SIZE):
        raise BadInputError(f"{path}: expected {SIZE}x{SIZE} px, found "
                            f"{image.shape[0]}x{image.shape[1]}")
    folder, file = os.path.split(path)
    return {
        "image": np.ascontiguousarray(image)[None],
        "bands": list(BANDS),
        "sensor": "s2_l1c",
        "key": f"{os.path.basename(folder)}/{os.path.splitext(file)[0]}",
        "labels": np.array([label], np.int64),
        "label_set": LABEL_SET,
        "num_classes": np.array([len(CLASSES)], np.int64),
    }


def split_items(images: dict, splits_dir: str | None, prefix: str) -> dict[str, list]:
    """{shard set prefix: items}; listed names without an image become ``(stem, None)``."""
    if not splits_dir:
        return {prefix: [images[stem] for stem in sorted(images)]}
    out = {}
    for split in SPLITS:
        names = read_split_names(os.path.join(splits_dir, SPLIT_FILE.format(split)))
        out[split] = [images.get(stem, (stem, None)) for stem in names]
    return out


def convert(input_dir: str, output_dir: str, *, splits_dir: str | None = None,
            prefix: str = "all", num_shards: int = 8, num_workers=None, skip_bad: bool = False,
            seed: int = 0, verbose: bool = True) -> dict:
    """Writes one shard set per split; returns {prefix: write_shards summary}."""
    if not os.path.isdir(input_dir):
        raise FileNotFoundError(f"--input {input_dir}: not a folder")
    class_root = find_class_root(input_dir)
    images = list_images(class_root)
    if not images:
        raise FileNotFoundError(f"{class_root}: no .tif images in the class folders")
    sets = split_items(images, splits_dir, prefix)
    unmatched = [f"{SPLIT_FILE.format(name)}: {stem}" for name, items in sets.items()
                 for stem, label in items if label is None]
    if unmatched and not skip_bad:
        raise BadInputError(
            f"{splits_dir}: {len(unmatched)} listed name(s) without a .tif in {class_root} "
            f"({', '.join(unmatched[:5])}{', ...' if len(unmatched) > 5 else ''})")
    listed = {path for items in sets.values() for path, label in items if label is not None}
    summaries = {}
    with committed_together():  # a bad image in val or test leaves an older train set too
        for name, items in sets.items():
            random.Random(seed).shuffle(items)
            summaries[name] = write_shards(
                items, make_record, output_dir, name, num_shards=num_shards,
                num_workers=num_workers, skip_bad=skip_bad, desc=f"eurosat {name}",
                verbose=verbose,
                extra_summary={"classes": list(CLASSES), "label_set": LABEL_SET,
                               "bands": list(BANDS), "class_root": class_root,
                               "images_found": len(images),
                               "images_in_no_split": len(images) - len(listed)})
    return summaries


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m data_prep.eurosat",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True,
                        help="folder tree holding the ten EuroSAT-MS class folders")
    parser.add_argument("--splits", default=None,
                        help="folder with eurosat-train.txt, eurosat-val.txt, eurosat-test.txt: "
                             "writes the shard sets train, val and test (default: one set)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the record order")
    add_writer_flags(parser, prefix="all", num_shards=8)
    args = parser.parse_args(argv)
    return convert(args.input, args.output, splits_dir=args.splits, prefix=args.prefix,
                   num_shards=args.num_shards, num_workers=args.num_workers,
                   skip_bad=args.skip_bad, seed=args.seed)


if __name__ == "__main__":
    from data_prep.common import run_cli
    run_cli(main, "python -m data_prep.eurosat")
