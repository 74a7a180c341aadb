"""Checks shard sets byte for byte against their manifests (CRC32C of every shard).

    python -m data_prep.verify DIR [DIR/train 'DIR/heldout-*.tfrecord' ...] [--workers 8]

A target is a folder (every set with a ``PREFIX.manifest.json`` in it), a set's path prefix, a
manifest or a glob of shards. Each bad shard is named with what is wrong (CRC32C, size, missing,
not listed, an interrupted writer); exit status 1 if any is bad, 2 if a target has no manifest.
Training itself checks only the sizes (geossl.data.manifest.check_shard_set), which is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

from geossl.data import manifest


def verify(targets, *, workers: int = 8, verbose: bool = True) -> dict:
    """``{"sets": n, "shards": n, "bytes": n, "bad": [(path, problem)], "missing_manifests":
    [target]}`` over the sets named by ``targets``; a tqdm bar of the bytes read when verbose."""
    from tqdm import tqdm
    missing = [t for t in targets if not manifest.find_manifests(t)]
    paths = sorted({p for t in targets for p in manifest.find_manifests(t)})
    sets = [(p, manifest.read_manifest(p)) for p in paths]
    total = sum(s["bytes"] for _, m in sets for s in m["shards"])
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="verifying", disable=not verbose)
    lock = threading.Lock()

    def advance(n):
        with lock:
            bar.update(n)

    bad = []
    for path, listed in sets:
        folder = os.path.dirname(path)
        for name, problem in manifest.verify_shard_set(path, workers=workers, progress=advance):
            bad.append((os.path.join(folder, name), problem))
            if verbose:
                bar.write(f"BAD {os.path.join(folder, name)}: {problem}")
    bar.close()
    return {"sets": len(sets), "shards": sum(len(m["shards"]) for _, m in sets), "bytes": total,
            "bad": bad, "missing_manifests": missing}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.verify",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="+",
                        help="folders, set prefixes, manifests or shard globs")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="threads reading shards")
    args = parser.parse_args(argv)
    start = time.time()
    result = verify(args.targets, workers=args.workers)
    for target in result["missing_manifests"]:
        print(f"python -m data_prep.verify: no shard manifest for {target} (sets written by "
              f"data_prep have PREFIX.manifest.json; others cannot be verified)", file=sys.stderr)
    bad = result["bad"]
    print(f"{result['shards']} shards of {result['sets']} sets, {result['bytes'] / 2**20:.1f} MiB "
          f"in {time.time() - start:.1f} s: " + (f"{len(bad)} bad" if bad else "all intact"))
    if bad:
        return 1
    return 2 if result["missing_manifests"] else 0


if __name__ == "__main__":
    from data_prep.common import run_cli
    run_cli(lambda: sys.exit(main()), "python -m data_prep.verify")
