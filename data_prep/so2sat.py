"""So2Sat LCZ42 (HDF5 files) -> TFRecord shards, read in chunks of rows.

    python -m data_prep.so2sat --input /data/so2sat --output /data/so2sat-shards \
        [--sensor s2|s1|both --splits train,val,test --num_shards 16]

Input: a folder with the version-2 files ``training.h5``, ``validation.h5``, ``testing.h5``
(version 3: point ``--input`` at its ``random/``, ``block/`` or ``culture_10/`` folder, which hold
``training.h5`` and ``testing.h5``); they become the shard sets ``train``, ``val`` and ``test``.
Each file holds (torchgeo's So2Sat reader, the tfds builder, the So2Sat LCZ42 paper):
- ``sen1`` (N, 32, 32, 8) float64, Sentinel-1 SLC-derived channels: real and imaginary part of
  the unfiltered VH and VV channels, the intensities of the refined-Lee filtered VH and VV
  channels, and the real and imaginary part of the filtered covariance matrix's off-diagonal
  element; stored as sensor "s1_slc", bands VH_re VH_im VV_re VV_im VH_lee VV_lee C12_re C12_im;
- ``sen2`` (N, 32, 32, 10) float64, Sentinel-2 bands B2 B3 B4 B5 B6 B7 B8 B8A B11 B12 as
  reflectance (digital number / 10000); stored as sensor "s2_l1c", multiplied by ``--s2_scale``
  (default 10000: back to digital numbers, the units of geossl's band statistics);
- ``label`` (N, 17) one-hot local climate zones (LCZ 1-10, A-G; torchgeo's class order).
Each row is one record: ``image`` (1, 32, 32, C) float32, ``labels`` = [argmax of the one-hot
row], ``label_set`` "so2sat_lcz42_17", ``num_classes`` 17, ``index`` (the row), ``key``
"<split>/<row, 6 digits>". ``--sensor both`` writes the S2 sets under ``OUTPUT/s2`` and the S1
sets under ``OUTPUT/s1``. Rows are read ``--chunk`` at a time (the files are tens of GB), in
file order. A file without the three datasets, or of other shapes, stops the run naming it; a
label row that is not one-hot stops it naming the row (``--skip_bad`` counts it instead).
"""

from __future__ import annotations

import argparse
import functools
import os

import numpy as np

from data_prep.common import BadInputError, add_writer_flags, write_shards
from geossl.data.parallel_writer import committed_together

FILES = {"train": "training.h5", "val": "validation.h5", "test": "testing.h5"}
CLASSES = ("Compact high rise", "Compact mid rise", "Compact low rise", "Open high rise",
           "Open mid rise", "Open low rise", "Lightweight low rise", "Large low rise",
           "Sparsely built", "Heavy industry", "Dense trees", "Scattered trees", "Bush, scrub",
           "Low plants", "Bare rock or paved", "Bare soil or sand", "Water")
LABEL_SET = "so2sat_lcz42_17"
S2_BANDS = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
S1_BANDS = ("VH_re", "VH_im", "VV_re", "VV_im", "VH_lee", "VV_lee", "C12_re", "C12_im")
#: sensor flag -> (HDF5 dataset, stored sensor name, band names)
SENSORS = {"s2": ("sen2", "s2_l1c", S2_BANDS), "s1": ("sen1", "s1_slc", S1_BANDS)}
CHUNK = 256


def check_file(path: str) -> int:
    """Number of rows of a So2Sat file; BadInputError naming a missing or misshapen dataset."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise BadInputError(f"{path}: unreadable HDF5 file ({e})") from None
    with f:
        shapes = {name: f[name].shape for name in ("sen1", "sen2", "label") if name in f}
    missing = [n for n in ("sen1", "sen2", "label") if n not in shapes]
    if missing:
        raise BadInputError(f"{path}: missing dataset(s) {missing}; found {sorted(shapes)}")
    n = shapes["label"][0]
    expected = {"sen1": (n, "H", "W", len(S1_BANDS)), "sen2": (n, "H", "W", len(S2_BANDS)),
                "label": (n, len(CLASSES))}
    for name, want in expected.items():
        found = shapes[name]
        if len(found) != len(want) or any(isinstance(w, int) and w != f
                                          for w, f in zip(want, found)):
            raise BadInputError(f"{path}: dataset {name!r}: expected shape "
                                f"({', '.join(map(str, want))}), found {found}")
    return n


_open_files: dict = {}   # path -> h5py.File, per process (workers read their own rows)


def _open(path: str):
    if path not in _open_files:
        import h5py
        _open_files[path] = h5py.File(path, "r")
    return _open_files[path]


def close_files() -> None:
    """Closes this process's HDF5 files and forgets its cached rows."""
    _chunk.cache_clear()
    while _open_files:
        _open_files.popitem()[1].close()


@functools.lru_cache(maxsize=1)
def _chunk(path: str, dataset: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows [start, stop) of ``dataset`` and of ``label`` (one read each, cached per process)."""
    f = _open(path)
    return f[dataset][start:stop], f["label"][start:stop]


def make_record(item, *, sensor: str, scale: float, chunk: int) -> dict:
    """One record from ``(path, split, row, rows in the file)``."""
    path, split, row, rows = item
    dataset, sensor_name, bands = SENSORS[sensor]
    start = row - row % chunk
    images, labels = _chunk(path, dataset, start, min(start + chunk, rows))
    onehot = labels[row - start]
    if not (np.isin(onehot, (0, 1)).all() and onehot.sum() == 1):
        raise BadInputError(f"{path}: label row {row}: expected a one-hot row of "
                            f"{len(CLASSES)}, found {onehot.tolist()}")
    image = images[row - start].astype(np.float32)
    if scale != 1:
        image = image * np.float32(scale)
    return {
        "image": image[None],
        "bands": list(bands),
        "sensor": sensor_name,
        "key": f"{split}/{row:06d}",
        "labels": np.array([int(np.argmax(onehot))], np.int64),
        "label_set": LABEL_SET,
        "num_classes": np.array([len(CLASSES)], np.int64),
        "index": np.array([row], np.int64),
    }


def convert(input_dir: str, output_dir: str, *, sensor: str = "s2", splits=None,
            s2_scale: float = 10000.0, chunk: int = CHUNK, num_shards: int = 16,
            num_workers=None, skip_bad: bool = False, verbose: bool = True) -> dict:
    """Writes a shard set per split (and sensor); returns {"<sensor>/<split>": summary}."""
    if sensor not in ("s2", "s1", "both"):
        raise ValueError(f"--sensor: expected s2, s1 or both, found {sensor!r}")
    if chunk < 1:
        raise ValueError(f"--chunk: expected a positive number of rows, found {chunk}")
    if not os.path.isdir(input_dir):
        raise FileNotFoundError(f"--input {input_dir}: not a folder")
    present = [s for s, f in FILES.items() if os.path.isfile(os.path.join(input_dir, f))]
    splits = list(splits) if splits else present
    unknown = [s for s in splits if s not in FILES]
    if unknown:
        raise ValueError(f"--splits: unknown split(s) {unknown}; expected some of {list(FILES)}")
    absent = [FILES[s] for s in splits if s not in present]
    if absent or not splits:
        raise FileNotFoundError(f"--input {input_dir}: missing {absent or list(FILES.values())}")
    sensors = ("s2", "s1") if sensor == "both" else (sensor,)
    summaries = {}
    close_files()  # rows cached by an earlier run in this process may be of another file
    try:
        with committed_together():  # a bad row in test leaves an older train set too
            for split in splits:
                path = os.path.abspath(os.path.join(input_dir, FILES[split]))
                rows = check_file(path)
                items = [(path, split, row, rows) for row in range(rows)]
                for name in sensors:
                    out = os.path.join(output_dir, name) if sensor == "both" else output_dir
                    scale = s2_scale if name == "s2" else 1.0
                    make = functools.partial(make_record, sensor=name, scale=scale, chunk=chunk)
                    summaries[f"{name}/{split}"] = write_shards(
                        items, make, out, split, num_shards=num_shards, num_workers=num_workers,
                        skip_bad=skip_bad, desc=f"so2sat {name} {split}", verbose=verbose,
                        extra_summary={"source": path, "label_set": LABEL_SET,
                                       "classes": list(CLASSES), "bands": list(SENSORS[name][2]),
                                       "sensor": SENSORS[name][1], "scale": scale})
    finally:
        close_files()
    return summaries


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m data_prep.so2sat",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True,
                        help="folder with training.h5 / validation.h5 / testing.h5")
    parser.add_argument("--sensor", default="s2", choices=("s2", "s1", "both"),
                        help="records of sen2 (10 bands), sen1 (8 channels) or both "
                             "(OUTPUT/s2 and OUTPUT/s1)")
    parser.add_argument("--splits", default=None,
                        help="comma-separated splits among train,val,test (default: the files "
                             "present)")
    parser.add_argument("--s2_scale", type=float, default=10000.0,
                        help="factor on the sen2 reflectances (10000: digital numbers; 1: as "
                             "stored)")
    parser.add_argument("--chunk", type=int, default=CHUNK,
                        help="rows read from the HDF5 file at a time")
    add_writer_flags(parser, prefix=None, with_prefix=False, num_shards=16)
    args = parser.parse_args(argv)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
    return convert(args.input, args.output, sensor=args.sensor, splits=splits,
                   s2_scale=args.s2_scale, chunk=args.chunk, num_shards=args.num_shards,
                   num_workers=args.num_workers, skip_bad=args.skip_bad)


if __name__ == "__main__":
    from data_prep.common import run_cli
    run_cli(main, "python -m data_prep.so2sat")
