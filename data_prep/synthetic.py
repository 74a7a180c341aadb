"""Synthetic multi-season Sentinel-2 L1C scenes and their Sentinel-1 rendering, with Dynamic-World
labels: the embedded demo data.

    python -m data_prep.synthetic --output DIR [--modality both|s2|s1 --num_locations 2048
        --seasons 4 --size 32 --num_shards 4 --seed 0 --heldout 512]

Writes ``train-0000k-of-0000K.tfrecord`` and the labelled probe split ``heldout-...`` (S2, 13
bands uint16), and ``s1-train-...`` / ``s1-heldout-...`` (S1 GRD, VV and VH in dB, float32, the same
locations co-registered); ``--modality`` (default both) picks the renderings. Sets already there
with the same parameters are reused: ``--modality s1`` adds S1 to an S2 folder. The scene
generator (classes, spectra, backscatter, textures, seasons, labels) is geossl.data.synthetic and
geossl.data.synthetic_s1, re-exported here.
"""

from __future__ import annotations

import argparse

from data_prep.common import non_negative_int, output_folder, positive_int
from geossl.data.synthetic import (  # noqa: F401 - the generator's public names
    BANDS, CLASSES, LABEL_SET, MODALITIES, PEAK, SENSOR, generate, greenness, make_location)
from geossl.data.synthetic_s1 import make_s1_location  # noqa: F401


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m data_prep.synthetic",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, type=output_folder,
                        help="folder for the shards")
    parser.add_argument("--modality", default="both", choices=MODALITIES,
                        help="s2 (train-*, heldout-*), s1 (s1-train-*, s1-heldout-*) or both")
    parser.add_argument("--num_locations", type=positive_int, default=2048,
                        help="training locations")
    parser.add_argument("--seasons", type=positive_int, default=4,
                        help="acquisitions per location (T)")
    parser.add_argument("--size", type=positive_int, default=32, help="scene side in pixels")
    parser.add_argument("--num_shards", type=positive_int, default=4, help="training shards")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scenes")
    parser.add_argument("--heldout", type=non_negative_int, default=512,
                        help="held-out probe locations (0: none)")
    parser.add_argument("--heldout_shards", type=positive_int, default=1, help="held-out shards")
    parser.add_argument("--num_workers", type=positive_int, default=None,
                        help="writer processes (default: one per core, at most one per shard)")
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if present")
    args = parser.parse_args(argv)
    try:
        summary = generate(args.output, num_locations=args.num_locations, seasons=args.seasons,
                           size=args.size, num_shards=args.num_shards, seed=args.seed,
                           heldout=args.heldout, heldout_shards=args.heldout_shards,
                           num_workers=args.num_workers, overwrite=args.overwrite,
                           modality=args.modality)
    except ValueError as e:  # S1 asked beside S2 sets of other parameters
        parser.error(str(e))
    for name, part in (("S2" if args.modality != "s1" else "S1", summary),
                       ("S1", summary.get("s1"))):
        if part is not None and part["reused"]:
            print(f"synthetic {name} data with these parameters already in {args.output}; reused")
    return summary


if __name__ == "__main__":
    from data_prep.common import run_cli
    run_cli(main, "python -m data_prep.synthetic")
