"""Host input pipeline throughput: decode, SoftCon two-view samples, grain with N workers.

    python benchmarks/input_pipeline.py --records 64 --seasons 4 --size 264 --img 224 --workers 0,1,2

Writes ``--records`` SSL4EO-like records (T seasons × 13 × size × size uint16) to a temporary shard
(``ShardWriter``), then measures on this machine:
  decode       ShardSource[i] (read, CRC32C, Example parse) — records/s;
  geometry     crop box → band select → clip → bilinear resize (host-side resize, per view pair);
  two-view     ``augment.two_view_sample`` with the SoftCon defaults (crop 0.08–1, jitter 0.8,
               gray 0.2, blur 1.0 / 0.1), decode included;
  grain N      ``pipeline.make_dataset`` batches (decode + views + stacking) with N worker processes.
In-process rows divide by this process's CPU time (robust when other jobs share the cores); grain
rows divide wall time by the cores they keep busy (max(1, N)). Target: >= 100 two-view samples/s
per core.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from geossl.data import augment, bands, pipeline  # noqa: E402


def write_records(folder: str, n: int, seasons: int, size: int) -> list:
    """n records into one shard; returns its ShardSource (or the in-memory list without one)."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        image = rng.integers(0, 6000, (seasons, size, size, 13)).astype(np.uint16)
        acq = (rng.random((seasons, 9)) < 0.3).astype(np.int64)
        records.append({"image": image, "bands": list(bands.S2_L1C), "sensor": "s2_l1c",
                        "labels": np.flatnonzero(acq.any(0)), "label_set": "dynamic_world_9",
                        "key": f"bench-{i}", "acq_labels": acq.reshape(-1),
                        "num_classes": np.array([9])})
    try:
        from geossl.data.tfrecord import ShardSource, ShardWriter
    except ImportError:
        print("geossl.data.tfrecord not available: measuring an in-memory list")
        return records
    path = os.path.join(folder, "bench-00000-of-00001.tfrecord")
    with ShardWriter(path) as writer:
        for r in records:
            writer.write(r)
    return ShardSource([path])


class Tiled:
    """``source`` repeated ``times`` over (index modulo its length): a large dataset's index range
    for grain's shuffle (index_shuffle costs ~0.7 ms per index on a 64-element range, µs on large
    ones) without writing more records."""

    def __init__(self, source, times: int):
        self.source, self.times = source, times

    def __len__(self) -> int:
        return len(self.source) * self.times

    def __getitem__(self, index):
        return self.source[index % len(self.source)]


def timed(fn, n: int) -> tuple[float, float]:
    """(items per wall second, items per CPU second of this process) over n calls."""
    fn(0)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - wall), n / max(time.process_time() - cpu, 1e-9)


def grain_rate(source, view_fn, workers: int, batch: int, batches: int) -> float:
    """Samples per wall second of the grain pipeline after a warm-up batch."""
    it = iter(pipeline.make_dataset(Tiled(source, 1000), view_fn, seed=0,
                                    local_batch_size=batch, num_workers=workers))
    try:
        next(it)                                   # start-up (worker spawn) excluded
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        return batches * batch / (time.perf_counter() - start)
    finally:
        if hasattr(it, "close"):
            it.close()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--records", type=int, default=64)
    p.add_argument("--seasons", type=int, default=4)
    p.add_argument("--size", type=int, default=264)
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--samples", type=int, default=64, help="in-process samples per measurement")
    args = p.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",") if w.strip()]

    cfg = augment.ViewConfig(img_size=args.img)
    view_fn = functools.partial(augment.two_view_sample, cfg=cfg)
    rows = []
    with tempfile.TemporaryDirectory(prefix="geossl-bench-") as folder:
        source = write_records(folder, args.records, args.seasons, args.size)
        n = len(source)
        wall, cpu = timed(lambda i: source[i % n], args.samples)
        rows.append(("decode (records)", "-", wall, cpu))

        recs = [source[i] for i in range(min(n, 8))]
        plan = augment.band_plan(tuple(recs[0]["bands"]), cfg.bands, cfg.norm)
        rng = np.random.default_rng(0)

        def geometry(i):
            img = recs[i % len(recs)]["image"]
            for t in (0, 1):
                params = augment.sample_view_params(rng, args.size, args.size, 13, cfg, t)
                augment.render_geometry(img[t % img.shape[0]], plan, params, args.img)

        wall, cpu = timed(geometry, args.samples)
        rows.append(("geometry x2 (no decode)", "-", wall, cpu))
        wall, cpu = timed(lambda i: view_fn(recs[i % len(recs)], rng), args.samples)
        rows.append(("two-view (no decode)", "-", wall, cpu))
        wall, cpu = timed(lambda i: view_fn(source[i % n], rng), args.samples)
        rows.append(("two-view + decode", "-", wall, cpu))
        for w in workers:
            rate = grain_rate(source, view_fn, w, args.batch, args.batches)
            rows.append((f"grain, {w} workers", str(w), rate, rate / max(1, w)))

    print(f"\n{args.records} records of {args.seasons}x{args.size}x{args.size}x13 uint16 -> two "
          f"views of {args.img}x{args.img}x13 float32; {os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"{'stage':<26}{'workers':>8}{'items/s':>11}{'per core':>11}")
    for name, w, rate, per_core in rows:
        print(f"{name:<26}{w:>8}{rate:>11.1f}{per_core:>11.1f}")
    two_view = rows[3][3]
    print(f"two-view samples/s per core (decode included): {two_view:.1f} "
          f"({'meets' if two_view >= 100 else 'below'} the 100/s/core target)")


if __name__ == "__main__":
    main()
