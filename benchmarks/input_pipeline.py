"""Input pipeline throughput, host-rendered vs device-rendered views, and the step's appetite.

    python benchmarks/input_pipeline.py --records 64 --seasons 4 --size 264 --img 224 --workers 0,2
    python benchmarks/input_pipeline.py ... --step_model vit_small_patch14   # '' skips the step

Writes ``--records`` SSL4EO-like records (T seasons × 13 × size × size uint16) to a temporary shard
(``ShardWriter``), then measures on this machine:
  decode            ShardSource[i] (read, CRC32C, Example parse) — records/s;
  geometry x2       crop box → band select → clip → bilinear resize of both views (host);
  two-view          ``softcon_views.two_view_sample`` with the SoftCon defaults (crop 0.08–1, jitter
                    0.8, gray 0.2, blur 1.0 / 0.1), without and with decode;
  raw two-view      ``softcon_views.raw_two_view_sample`` + decode: the host's share when views are
                    rendered in the step (config.data.views = "device");
  grain N           ``pipeline.make_dataset`` batches (decode + views + stacking), N workers,
                    timed in the steady state (after ``warmup_batches(N)``: start-up and the
                    workers' first use of their shared-memory blocks left out);
  device render     the jitted ``device_views.render_views`` of both views (on the default
                    backend), samples/s;
  train step        the SoftCon step of ``--step_model`` at ``--batch`` samples, views given
                    (host) or rendered inside the step (device): the rate the step consumes;
  <method> views    ``--methods`` (default pera,gfm): the objective's own ``make_views`` + decode
                    with the config and sizes of ``benchmarks/train_step.py --method M`` (PerA: 2
                    global crops at --img and 8 local pairs of 96 px; GFM: one masked crop), and
                    that method's train step (``--method_steps`` timed steps, 0 skips it).
``--rounds R`` measures two-view + decode and the grain host-view rows R times in turns: the rows
give medians, the worker line each ratio's median (min–max) over the rounds.
"per core" divides by the CPU seconds spent (this process, its threads and its grain workers), so
it holds when other jobs share the cores; items/s is wall-clock. Target: >= 200 two-view samples/s
per core. The last lines give host cores needed to feed the step in each mode.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from geossl.data import augment, bands, device_views, malloc, pipeline, shared_batches  # noqa: E402
from geossl.objectives import softcon_views  # noqa: E402


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
        from geossl.data import ShardSource, ShardWriter
    except ImportError:
        print("geossl.data not available: measuring an in-memory list")
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


def cpu_seconds() -> float:
    """CPU seconds of this process and its live children (grain workers), via psutil if present."""
    total = time.process_time()
    try:
        import psutil
    except ImportError:
        return total
    for child in psutil.Process().children(recursive=True):
        try:
            t = child.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def grain_rate(source, view_fn, workers: int, batch: int, batches: int) -> tuple[float, float]:
    """(samples per wall second, per CPU second incl. workers) of the grain pipeline in its steady
    state: timed after a warm-up of ``warmup_batches(workers)``."""
    it = iter(pipeline.make_dataset(Tiled(source, 1000), view_fn, seed=0,
                                    local_batch_size=batch, num_workers=workers))
    try:
        for _ in range(warmup_batches(workers)):
            next(it)
        wall, cpu = time.perf_counter(), cpu_seconds()
        for _ in range(batches):
            next(it)
        n = batches * batch
        return n / (time.perf_counter() - wall), n / max(cpu_seconds() - cpu, 1e-9)
    finally:
        if hasattr(it, "close"):
            it.close()


def warmup_batches(workers: int) -> int:
    """Batches left out before timing: the start-up (worker spawn, imports) and, with workers, the
    filling of each worker's ``shared_batches.MAX_BLOCKS`` reused blocks, whose first use maps and
    zeroes fresh pages (~83 MB a block at batch 16; a one-off of the first seconds of a run)."""
    return 1 + workers * shared_batches.MAX_BLOCKS


def worker_rounds(args, source, view_fn, workers, rng) -> tuple[list, dict]:
    """``args.rounds`` rounds in turns of the in-process two-view + decode rate and the grain
    host-view rate with each number of workers. Returns the rows (medians: "two-view + decode",
    then "grain host views" per worker count) and {workers: [(wall rate / that round's in-process
    per-core rate, wall rate / that round's grain per-core rate without workers or nan), ...]}."""
    n, rates, ratios = len(source), {}, {w: [] for w in workers}
    for _ in range(args.rounds):
        wall, cpu = timed(lambda i: view_fn(source[i % n], rng), args.samples)
        rates.setdefault("-", []).append((wall, cpu))
        this_round = {w: grain_rate(source, view_fn, w, args.batch, args.batches)
                      for w in workers}
        grain_cpu = this_round[0][1] if 0 in this_round else float("nan")
        for w, (g_wall, g_cpu) in this_round.items():
            rates.setdefault(w, []).append((g_wall, g_cpu))
            ratios[w].append((g_wall / cpu, g_wall / grain_cpu))
    med = {k: tuple(float(np.median(col)) for col in zip(*v)) for k, v in rates.items()}
    rows = [("two-view + decode", "-", *med["-"])]
    rows += [("grain host views", str(w), *med[w]) for w in workers]
    return rows, ratios


def render_rate(raw_batch: dict, cfg, repeats: int) -> tuple[float, float]:
    """(samples/s wall, per CPU second) of the jitted device-side rendering of both views."""
    import jax

    @jax.jit
    def render(b):
        spec = cfg.render_spec()
        return [device_views.render_views(b[f"raw{v}"], b[f"view_params{v}"], spec) for v in (1, 2)]

    batch = jax.device_put(raw_batch)
    jax.block_until_ready(render(batch))
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        jax.block_until_ready(render(batch))
    n = repeats * len(raw_batch["raw1"])
    return n / (time.perf_counter() - wall), n / max(time.process_time() - cpu, 1e-9)


def step_rate(args, views: str, batch: dict) -> tuple[float, float]:
    """(samples/s wall, per CPU second) of the SoftCon train step (``geossl.train``) of ``args.step_model`` on one device
    at ``args.batch`` samples, with views given (host) or rendered in the step (device)."""
    import jax
    from configs.softcon import softcon
    from geossl import objectives
    from geossl.parallel import mesh as mesh_lib
    from geossl.train.loop import build_trainer
    c = softcon(args.step_model, None, optim="adamw", lr=1e-4)
    c.model.img_size = args.img
    c.global_batch, c.total_steps, c.data.views = args.batch, 100, views
    c.lr.warmup_steps = 1
    devices = jax.devices()[:1]
    mesh = mesh_lib.make_mesh(c.mesh, devices)
    objective = objectives.create(c)
    trainer = build_trainer(c, objective, mesh, {k: v[:2] for k, v in batch.items()})
    state = trainer.init_state()
    state, metrics = trainer.train_step(state, batch)          # compile
    jax.block_until_ready(metrics)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        state, metrics = trainer.train_step(state, batch)
    jax.block_until_ready(metrics)
    n = args.steps * args.batch
    return n / (time.perf_counter() - wall), n / max(time.process_time() - cpu, 1e-9)


def method_rows(args, source) -> tuple[list, dict]:
    """Rows (name, workers, items/s, per core) of each ``args.methods`` objective's views with
    decode, and {method: its train step's samples/s} (``benchmarks/train_step.py``'s step)."""
    import train_step
    from geossl import objectives
    rows, steps, n = [], {}, len(source)
    for method in [m for m in args.methods.split(",") if m.strip()]:
        bench = argparse.Namespace(method=method, arch=train_step.default_arch(method),
                                   img=args.img, bands=13, batch=args.batch)
        config = train_step.load_config(bench)
        objective, rng = objectives.create(config), np.random.default_rng(0)
        wall, cpu = timed(lambda i: objective.make_views(source[i % n], rng), args.samples // 4)
        rows.append((f"{method} views + decode", "-", wall, cpu))
        if args.method_steps:
            side = train_step.geossl_side(bench)[2]
            times = train_step.step_times(side["step"], 1, args.method_steps)
            steps[method] = args.batch / float(np.median(times))
            rows.append((f"{method} train step", "-", steps[method], float("nan")))
    return rows, steps


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
    p.add_argument("--rounds", type=int, default=1,
                   help="rounds of the two-view + decode and grain rows, in turns (median, "
                        "min-max of the worker ratios)")
    p.add_argument("--steps", type=int, default=3, help="timed train steps / render repeats")
    p.add_argument("--step_model", default="vit_small_patch14",
                   help="model of the train-step rate ('' skips it)")
    p.add_argument("--methods", default="pera,gfm",
                   help="objectives whose own views are timed ('' skips them)")
    p.add_argument("--method_steps", type=int, default=2,
                   help="timed train steps of each --methods objective (0 skips them)")
    args = p.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    malloc.reuse_freed_memory()  # as the pipeline does where it builds views (data.tune_malloc)

    cfg = softcon_views.ViewConfig(img_size=args.img)
    view_fn = functools.partial(softcon_views.two_view_sample, cfg=cfg)
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
                params = softcon_views.sample_view_params(rng, args.size, args.size, 13, cfg, t)
                augment.render_geometry(img[t % img.shape[0]], plan, params, args.img)

        wall, cpu = timed(geometry, args.samples)
        rows.append(("geometry x2 (no decode)", "-", wall, cpu))
        wall, cpu = timed(lambda i: view_fn(recs[i % len(recs)], rng), args.samples)
        rows.append(("two-view (no decode)", "-", wall, cpu))
        two_view_rows, ratios = worker_rounds(args, source, view_fn, workers, rng)
        rows.append(two_view_rows[0])
        raw_fn = functools.partial(softcon_views.raw_two_view_sample, cfg=cfg)
        wall, cpu = timed(lambda i: raw_fn(source[i % n], rng), args.samples)
        rows.append(("raw two-view + decode", "-", wall, cpu))
        rows += two_view_rows[1:]
        for w in workers:
            rows.append(("grain device views", str(w),
                         *grain_rate(source, raw_fn, w, args.batch, args.batches)))
        raw_batch = pipeline.stack([raw_fn(recs[i % len(recs)], rng) for i in range(args.batch)])
        rows.append(("device render (jit)", "-", *render_rate(raw_batch, cfg, args.steps)))
        extra, method_steps = method_rows(args, source)
        rows += extra
        step = {}
        if args.step_model:
            host_batch = pipeline.stack([view_fn(recs[i % len(recs)], rng)
                                         for i in range(args.batch)])
            for mode, batch in (("host", host_batch), ("device", raw_batch)):
                wall, cpu = step_rate(args, mode, batch)
                step[mode] = wall
                rows.append((f"train step, {mode} views", "-", wall, cpu))

    print(f"\n{args.records} records of {args.seasons}x{args.size}x{args.size}x13 uint16 -> two "
          f"views of {args.img}x{args.img}x13 float32; {os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"{'stage':<28}{'workers':>8}{'items/s':>11}{'per core':>11}")
    for name, w, r, per_core in rows:
        per = "-" if np.isnan(per_core) else f"{per_core:.1f}"
        print(f"{name:<28}{w:>8}{r:>11.1f}{per:>11}")
    rate = {name: per_core for name, _, _, per_core in rows}
    two_view, raw = rate["two-view + decode"], rate["raw two-view + decode"]
    print(f"two-view samples/s per core (decode included): host views {two_view:.1f}, device "
          f"views {raw:.1f} ({'meets' if two_view >= 200 else 'below'} the 200/s/core target)")
    scaling = [(w, np.array(x)) for w, x in ratios.items() if w]
    for col, versus in ((0, "the in-process per-core rate"),
                        (1, "grain's per-core rate without workers")):
        shown = [(w, x[:, col]) for w, x in scaling if not np.isnan(x[:, col]).any()]
        if shown:
            print(f"grain workers, samples per wall second / {versus} (median (min-max) of "
                  f"{args.rounds} round{'s' * (args.rounds > 1)}): "
                  + ", ".join(f"{w} worker{'s' * (w != 1)} {np.median(x):.2f}x ({x.min():.2f}-"
                              f"{x.max():.2f}" + (f"; target {0.8 * w:.1f}x)" if col == 0 else ")")
                              for w, x in shown))
    for mode, per_core in (("host", two_view), ("device", raw)):
        if mode in step:
            print(f"{mode} views: the step consumes {step[mode]:.1f} samples/s = "
                  f"{step[mode] / per_core:.2f} host cores of input pipeline")
    for method, consumed in method_steps.items():
        per_core = rate[f"{method} views + decode"]
        print(f"{method}: the step (benchmarks/train_step.py --method {method}, batch "
              f"{args.batch}) consumes {consumed:.1f} samples/s = {consumed / per_core:.2f} host "
              f"cores of its views ({per_core:.1f} samples/s per core)")


if __name__ == "__main__":
    main()
