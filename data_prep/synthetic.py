"""Synthetic multi-season Sentinel-2 L1C scenes with Dynamic-World labels: the embedded demo data.

    python -m data_prep.synthetic --output DIR [--num_locations 2048 --seasons 4 --size 32
        --num_shards 4 --seed 0 --heldout 512]

Writes ``train-0000k-of-0000K.tfrecord`` and the labelled probe split ``heldout-...``. The scene
generator (classes, spectra, textures, seasons, labels) is geossl.data.synthetic, re-exported here.
"""

from __future__ import annotations

import argparse

from geossl.data.synthetic import (  # noqa: F401 - the generator's public names
    BANDS, CLASSES, LABEL_SET, PEAK, SENSOR, generate, greenness, make_location)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m data_prep.synthetic",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="folder for the shards")
    parser.add_argument("--num_locations", type=int, default=2048, help="training locations")
    parser.add_argument("--seasons", type=int, default=4, help="acquisitions per location (T)")
    parser.add_argument("--size", type=int, default=32, help="scene side in pixels")
    parser.add_argument("--num_shards", type=int, default=4, help="training shards")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scenes")
    parser.add_argument("--heldout", type=int, default=512, help="held-out probe locations")
    parser.add_argument("--heldout_shards", type=int, default=1, help="held-out shards")
    parser.add_argument("--num_workers", type=int, default=None,
                        help="writer processes (default: one per core, at most one per shard)")
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if present")
    args = parser.parse_args(argv)
    summary = generate(args.output, num_locations=args.num_locations, seasons=args.seasons,
                       size=args.size, num_shards=args.num_shards, seed=args.seed,
                       heldout=args.heldout, heldout_shards=args.heldout_shards,
                       num_workers=args.num_workers, overwrite=args.overwrite)
    if summary["reused"]:
        print(f"synthetic data with these parameters already in {args.output}; reused")
    return summary


if __name__ == "__main__":
    from data_prep.common import run_cli
    run_cli(main, "python -m data_prep.synthetic")
