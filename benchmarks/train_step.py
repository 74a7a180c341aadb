"""geossl's real train step of each method against the same step written in PyTorch, on this machine.

    python benchmarks/train_step.py --method softcon --arch vit_small_patch14 --batch 8 --img 224 --steps 5
    python benchmarks/train_step.py --method softcon --arch resnet50
    python benchmarks/train_step.py --method softcon --arch swin_tiny_patch4_window7_224
    python benchmarks/train_step.py --method pera|gfm|dense|mae      (each method's default arch)

geossl: the trainer's own step. The config main.py loads (the method's file in
``benchmarks/twins/<method>.py``, same ml_collections parser) with model.img_size, model.in_chans,
global_batch and data.views="host" overridden, then the twin's own overrides (its backbone for
--arch) → objectives.create → make_mesh → loop.build_trainer → init_state; train_step is compiled
ahead of time once (compile time reported apart) and that executable is timed on the objective's
own make_views samples of synthetic records placed with multihost.global_batch. Where the method
saves work by masking (SoftCon's Siamese masking), the same-math row has it off and the saving is
its own row.
PyTorch: the method's twin (benchmarks/twins/<method>.py: timm / torchvision backbones, the same
heads, teacher handling, masks and loss) on the same numpy batch.
Both float32 on all cores; the sides take turns (a drifting host slows both alike): step time =
median over --steps rounds, each side running an untimed then a timed step, after --warmup; the
spread (min–max) is printed. images/s = samples per second (the trainer's metric). FLOPs per step:
XLA's cost analysis of the geossl executable, and torch's FlopCounterMode (matmuls,
convolutions and attention) over one twin step; peak = best n³ fp32 matmul of numpy and jax.
On a loaded machine PyTorch's OpenMP threads wait on busy cores: compare --torch_threads 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

METHODS = ("softcon", "pera", "gfm", "dense", "mae")


def twin(method: str):
    """The method's twin module (benchmarks/twins/<method>.py)."""
    if method not in METHODS:
        raise SystemExit(f"--method: expected one of {', '.join(METHODS)}, found {method!r}")
    return importlib.import_module(f"twins.{method}")


def default_arch(method: str) -> str:
    return next(iter(twin(method).ARCHS))


def load_config(args, overrides: dict | None = None):
    """The config file main.py's --config flag would load for ``args.method`` / ``args.arch`` (same
    ml_collections parser), with the benchmark's sizes, then the twin's overrides, then
    ``overrides`` ({"objective.mask_ratio": 0.0, ...})."""
    from ml_collections.config_flags.config_flags import ConfigFileFlagParser
    from configs import common
    module = twin(args.method)
    if args.arch not in module.ARCHS:
        raise SystemExit(f"--arch for --method {args.method}: expected one of "
                         f"{', '.join(module.ARCHS)}, found {args.arch!r}")
    path = module.ARCHS[args.arch]
    if args.bands == len(common.S1_BANDS) and ":" not in path:
        path += ":sar"
    config = ConfigFileFlagParser("config").parse(os.path.join(ROOT, path))
    if args.bands not in (len(common.S1_BANDS), len(config.data.bands)):
        config.data.bands = list(config.data.bands)[:args.bands]  # the first C bands of a record
    config.model.img_size, config.model.in_chans = args.img, args.bands
    config.global_batch, config.data.views = args.batch, "host"
    module.configure(config, args.arch, args)
    for path, value in (overrides or {}).items():
        *parents, leaf = path.split(".")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


def synthetic_batch(config, objective, seasons: int = 4) -> dict:
    """(B, ...) numpy arrays of objective.make_views samples of random records (uint16 images of
    the config's bands at SSL4EO-S12's 264 px per 224 crop, multi-labels, land-cover maps)."""
    rng = np.random.default_rng(0)
    size = int(round(config.model.img_size * 264 / 224))
    bands, k = list(config.data.bands), int(config.data.num_classes)
    sensor = "s1_grd" if bands[0] == "VV" else "s2_l1c"
    samples = []
    for i in range(config.global_batch):
        record = {"image": rng.integers(0, 4000, (seasons, size, size, len(bands)), dtype=np.uint16),
                  "labels": np.array([0, 1], np.int64), "bands": bands, "sensor": sensor,
                  "key": f"bench-{i}", "label_set": "dynamic_world_9",
                  "acq_labels": (rng.random(seasons * k) < 0.3).astype(np.int64),
                  "num_classes": np.array([k], np.int64),
                  "land_cover": rng.integers(0, k, (seasons, size, size), dtype=np.uint8)}
        samples.append(objective.make_views(record, rng))
    return {key: np.stack([s[key] for s in samples]) for key in samples[0]}


def step_times(step, warmup: int, steps: int) -> list[float]:
    """Wall times of ``steps`` calls of ``step()`` (which returns once its results are ready)
    after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times


def step_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: a list of dicts
    return float((cost or {}).get("flops", float("nan")))


def compiled_step(args, overrides: dict | None = None):
    """The trainer's step for ``args`` (with config ``overrides``), compiled ahead of time: a dict
    of config, host_batch (numpy), batch (placed), state, compiled (the executable the loop runs)
    and compile_s."""
    from geossl import objectives
    from geossl.parallel import mesh as mesh_lib
    from geossl.parallel import multihost
    from geossl.train.loop import build_trainer
    config = load_config(args, overrides)
    objective = objectives.create(config)
    mesh = mesh_lib.make_mesh(config.mesh)
    host_batch = synthetic_batch(config, objective)
    trainer = build_trainer(config, objective, mesh, {k: v[:2] for k, v in host_batch.items()})
    state = trainer.init_state()
    batch = multihost.global_batch(host_batch, mesh)
    t = time.perf_counter()
    compiled = trainer.train_step.lower(state, batch).compile()
    return dict(config=config, host_batch=host_batch, batch=batch, state=state, compiled=compiled,
                compile_s=time.perf_counter() - t)


def geossl_side(args, overrides: dict | None = None, label: str = "same math"):
    """(config, host batch, side) of the trainer's step; side = dict(step=a closure running one step
    to completion, loss=the last step's loss, row fields)."""
    built = compiled_step(args, overrides)
    compiled, batch = built["compiled"], built["batch"]
    out = {"state": built["state"]}

    def step():
        out["state"], out["metrics"] = jax.block_until_ready(compiled(out["state"], batch))

    side = dict(side="geossl (jax)", row=label, compile_s=built["compile_s"],
                flops=step_flops(compiled), step=step, loss=lambda: float(out["metrics"]["loss"]))
    return built["config"], built["host_batch"], side


def torch_flops(torch, step) -> float:
    """Matmul, convolution and attention FLOPs of one call of ``step`` (forward and backward), as
    torch's FlopCounterMode counts them."""
    from torch.utils import flop_counter
    aten = torch.ops.aten   # the CPU attention kernels count like the GPU ones (torch leaves them 0)
    cpu_attention = {
        aten._scaled_dot_product_flash_attention_for_cpu:
            lambda q, k, v, *_, **__: flop_counter.sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda g, q, k, v, *_, **__: flop_counter.sdpa_backward_flop_count(g, q, k, v)}
    counter = flop_counter.FlopCounterMode(display=False, custom_mapping=cpu_attention)
    with counter:
        step()
    return float(counter.get_total_flops())


def torch_side(args, config, host_batch) -> dict:
    """The method's PyTorch twin as a side (see ``geossl_side``)."""
    import torch
    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    side = twin(args.method).torch_side(torch, args, config, host_batch)
    return dict(side=f"PyTorch ({side['lib']})", row="same math", compile_s=float("nan"),
                step=side["step"], loss=side["loss"], torch_flops=torch_flops(torch, side["step"]))


def interleaved_times(sides, warmup: int, steps: int) -> None:
    """Times the sides in turns, so that a machine whose speed drifts (a shared or virtual host)
    slows every side alike: ``warmup`` untimed steps of each, then ``steps`` rounds in which each
    side runs one untimed step (it takes the cost of the previous side's freed memory and idle
    threads) and one timed step. Sets each side's ``times`` and ``step_s`` (their median); raises
    if a side's loss is not finite."""
    for side in sides:
        for _ in range(warmup):
            side["step"]()
    times = [[] for _ in sides]
    for _ in range(steps):
        for side, record in zip(sides, times):
            side["step"]()
            t = time.perf_counter()
            side["step"]()
            record.append(time.perf_counter() - t)
    for side, record in zip(sides, times):
        if not np.isfinite(side["loss"]()):
            raise FloatingPointError(f"{side['side']} {side['row']}: loss {side['loss']()}")
        side["times"], side["step_s"] = record, statistics.median(record)


def matmul_peak(n: int, repeats: int = 3) -> tuple[float, str]:
    """Best fp32 FLOP/s of an n×n×n matmul with numpy and with jax: (FLOP/s, which)."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), np.float32), rng.random((n, n), np.float32)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    dot = jax.jit(jnp.dot)
    best = {name: 2 * n**3 / min(step_times(fn, 1, repeats)) for name, fn in
            (("numpy", lambda: a @ b), ("jax", lambda: dot(ja, jb).block_until_ready()))}
    name = max(best, key=best.get)
    return best[name], name


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="softcon", choices=METHODS)
    p.add_argument("--arch", default="", help="backbone (default: the method's first, see its twin)")
    p.add_argument("--batch", type=int, default=8, help="global batch (samples)")
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--bands", type=int, default=13)
    p.add_argument("--steps", type=int, default=5, help="timed rounds (median and min–max reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after compilation")
    p.add_argument("--torch_threads", type=int, default=os.cpu_count(),
                   help="PyTorch intra-op threads (default: all cores, like XLA)")
    p.add_argument("--peak_size", type=int, default=2048, help="n of the n³ peak matmul")
    add_malloc_flag(p)
    args = p.parse_args(argv)
    args.arch = args.arch or default_arch(args.method)
    return args


def add_malloc_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--malloc", default="reuse", choices=("reuse", "huge", "keep", "default"),
                        help="reuse (as main.py by default): huge, and the step's buffers reuse "
                             "their pages (malloc.keep_main_heap + cpu_options."
                             "run_steps_on_calling_thread); huge: start again with glibc's "
                             "huge-page tunable where the kernel gives huge pages on request; "
                             "keep: geossl.data.malloc.keep_step_memory() first, as main.py "
                             "--keep_step_memory does; default: glibc's as the process started")


def apply_malloc(args) -> None:
    """The allocator setting of ``--malloc``, before jax starts (process-wide: both sides run
    under it). ``huge`` and ``reuse`` start the benchmark again (same PID and arguments) where
    that helps; ``args.malloc`` then says what the process has."""
    from geossl.data import malloc
    from geossl.parallel import cpu_options
    if args.malloc in ("huge", "reuse"):
        malloc.exec_with_huge_pages()
    if args.malloc == "reuse" and not (malloc.keep_main_heap()
                                       and cpu_options.run_steps_on_calling_thread()):
        args.malloc = "reuse (refused)"
    elif args.malloc == "keep" and not malloc.keep_step_memory():
        args.malloc = "default (mallopt refused)"
    args.malloc = f"{args.malloc}: {malloc.huge_pages_state()}"


def table(args, rows, peak, peak_lib, title: str) -> list[str]:
    """The printed table: one line per row, then each geossl row's ratio to the PyTorch row (the
    last) in images/s, with the min–max of the per-round ratios."""
    dtype = getattr(args, "dtype", "float32")          # backbone_step.py's --dtype
    lines = [f"{title}: {args.arch}, {args.bands} bands, {args.img} px, batch {args.batch}, "
             f"{dtype}, {os.cpu_count()} CPU cores (PyTorch threads {args.torch_threads}), jax "
             f"{jax.__version__} {jax.default_backend()}, malloc {args.malloc}",
             f"peak: {peak / 1e9:.1f} GFLOP/s ({peak_lib} fp32 matmul {args.peak_size}³, best of 3)",
             f"step time: median (min–max) of {args.steps} rounds (per side one untimed + one timed "
             f"step) after {args.warmup} warm-up; images/s = samples/s",
             f"{'side':24s} {'row':14s} {'compile s':>9s} {'step ms (min–max)':>24s} {'images/s':>8s} "
             f"{'GFLOP/step':>10s} {'% peak':>6s} {'torch GFLOP':>11s}"]
    same = rows[0]
    for r in rows:
        flops = r.get("flops", same["flops"])
        compile_s = "-" if np.isnan(r["compile_s"]) else f"{r['compile_s']:.1f}"
        spread = f"{r['step_s'] * 1e3:.0f} ({min(r['times']) * 1e3:.0f}–{max(r['times']) * 1e3:.0f})"
        tf = f"{r['torch_flops'] / 1e9:.2f}" if "torch_flops" in r else "-"
        lines.append(f"{r['side']:24s} {r['row'][:14]:14s} {compile_s:>9s} {spread:>24s} "
                     f"{args.batch / r['step_s']:8.2f} {flops / 1e9:10.2f} "
                     f"{100 * flops / r['step_s'] / peak:6.1f} {tf:>11s}")
    theirs = rows[-1]
    for r in rows[:-1]:
        per_round = [t / g for t, g in zip(theirs["times"], r["times"])]
        lines.append(f"ratio geossl / PyTorch images/s, {r['row']}: "
                     f"{theirs['step_s'] / r['step_s']:.2f} (per round {min(per_round):.2f}"
                     f"–{max(per_round):.2f})")
    return lines


def main(argv=None):
    args = parse_args(argv)
    apply_malloc(args)
    module = twin(args.method)
    peak, peak_lib = matmul_peak(args.peak_size)
    saving = getattr(module, "SAVING", {})   # {config path: value at the same math}
    config, host_batch, base = geossl_side(args, saving)
    rows = [base]
    if saving:
        rows.append(geossl_side(args, None, "config's mask")[2])
    rows.append(torch_side(args, config, host_batch))
    interleaved_times(rows, args.warmup, args.steps)
    lines = table(args, rows, peak, peak_lib, f"{args.method} train step")
    print("\n".join(lines + [getattr(module, "NOTE", "")]).rstrip())


if __name__ == "__main__":
    main()
