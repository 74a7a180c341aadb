"""One pass over the methods' real train steps on the machine's accelerator: step time, images/s,
MFU against the chip's peak and peak memory. ``benchmarks/accelerator.sh`` runs it.

    bash benchmarks/accelerator.sh                       # GPU / TPU host: the paper-size models
    bash benchmarks/accelerator.sh --dry_run             # CPU, :demo configs, tiny shapes (tests)
    bash benchmarks/accelerator.sh --methods softcon --batch_per_device 256 --steps 20

Each method's config file (the one main.py loads) with ``global_batch`` = batch_per_device × the
devices and host views; the trainer's own step (loop.build_trainer) is compiled ahead of time and
timed on a batch of ``make_views`` samples of a few synthetic scenes (geossl.data.synthetic).
FLOPs: XLA's cost analysis of the compiled step. MFU = FLOPs / step time / (peak per chip × chips),
the peak taken from ``PEAK_TFLOPS`` by device kind for the compute dtype (bf16 unless --fp32);
"n/a" for chips not listed (and the CPU). Peak memory: the allocator's peak where the backend
reports one (GPU, TPU), else XLA's compiled estimate (arguments + temporaries).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

#: method → (config file, variant for the accelerator run). ViT-B/14 SoftCon, PerA ViT-B/16, GFM Swin-B.
METHODS = {
    "softcon": "configs/softcon_vit_b.py",
    "pera": "configs/pera_vit_b.py",
    "gfm": "configs/gfm_swin_b.py",
    "dense": "configs/dense_vit_s.py",
}

#: Dense peak TFLOP/s per chip: (bf16, fp32). Vendor datasheets, without sparsity.
PEAK_TFLOPS = {
    "H200": (989.0, 67.0), "H100": (989.0, 67.0), "A100": (312.0, 19.5), "L4": (121.0, 30.3),
    "A10G": (70.0, 31.2), "V100": (125.0, 15.7),
    "TPU v4": (275.0, 275.0), "TPU v5 lite": (197.0, 197.0), "TPU v5e": (197.0, 197.0),
    "TPU v5p": (459.0, 459.0), "TPU v6 lite": (918.0, 918.0), "TPU v6e": (918.0, 918.0),
}


def chip_peak(kind: str, fp32: bool) -> float | None:
    """Peak FLOP/s of one chip named ``kind`` (jax's device_kind), or None when unknown."""
    for name, (bf16, f32) in PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            return 1e12 * (f32 if fp32 else bf16)
    return None


def load_config(path: str, args):
    import jax
    from ml_collections.config_flags.config_flags import ConfigFileFlagParser
    config = ConfigFileFlagParser("config").parse(os.path.join(ROOT, path) + (":demo" if args.dry_run else ""))
    config.global_batch = args.batch_per_device * jax.device_count()
    config.data.views = "host"
    if not args.fp32:
        config.model.dtype = "bfloat16"
    return config


def host_batch(config, objective, scenes: int = 4) -> dict:
    """(B, ...) numpy samples of ``objective.make_views`` over a few synthetic scenes."""
    from geossl.data.synthetic import make_location
    size = int(np.ceil(int(config.model.img_size) * 264 / 224))
    records = [make_location(i, split="train", seasons=2, size=size, seed=0) for i in range(scenes)]
    rng = np.random.default_rng(0)
    samples = [objective.make_views(records[i % scenes], rng) for i in range(config.global_batch)]
    return {k: np.stack([s[k] for s in samples]) for k in samples[0]}


def peak_memory(compiled) -> tuple[float, str]:
    import jax
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**30, "allocator peak"
    m = compiled.memory_analysis()
    return (m.argument_size_in_bytes + m.temp_size_in_bytes) / 2**30, "XLA estimate"


def bench(method: str, args) -> dict:
    import jax
    from geossl import objectives
    from geossl.parallel import mesh as mesh_lib
    from geossl.parallel import multihost
    from geossl.train.loop import build_trainer
    config = load_config(METHODS[method], args)
    objective = objectives.create(config)
    mesh = mesh_lib.make_mesh(config.mesh)
    batch_np = host_batch(config, objective)
    trainer = build_trainer(config, objective, mesh, {k: v[:2] for k, v in batch_np.items()})
    state = trainer.init_state()
    batch = multihost.global_batch(batch_np, mesh)
    t = time.perf_counter()
    compiled = trainer.train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t
    for _ in range(args.warmup):
        state, _ = compiled(state, batch)
    jax.block_until_ready(state)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float((cost or {}).get("flops", float("nan")))
    peak = chip_peak(jax.devices()[0].device_kind, args.fp32)
    memory, how = peak_memory(compiled)
    return {"method": method, "model": config.model.name, "img": int(config.model.img_size),
            "batch": config.global_batch, "compile_s": compile_s, "step_s": step_s,
            "images_per_s": config.global_batch / step_s, "tflops": flops / 1e12,
            "mfu": None if peak is None else flops / step_s / (peak * jax.device_count()),
            "memory_gib": memory, "memory_kind": how, "loss": float(metrics["loss"])}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated subset of {list(METHODS)} (missing config files are skipped)")
    p.add_argument("--batch_per_device", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--fp32", action="store_true", help="float32 compute (default: bfloat16)")
    p.add_argument("--dry_run", action="store_true",
                   help="the :demo configs, batch 1 per device, 1 step: checks the script on the CPU")
    args = p.parse_args(argv)
    if args.dry_run:
        args.batch_per_device, args.steps, args.warmup = 1, 1, 0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        p.error(f"--methods: unknown {unknown}; expected some of {list(METHODS)}")
    import jax  # after the flags: a bad command line fails at once
    d = jax.devices()[0]
    print(f"{jax.device_count()} × {d.device_kind} ({d.platform}), jax {jax.__version__}, "
          f"{'float32' if args.fp32 else 'bfloat16'} compute, float32 weights and losses")
    print(f"{'method':8} {'model':30} {'img':>4} {'batch':>5} {'compile s':>9} {'step s':>8} "
          f"{'img/s':>8} {'TFLOP/step':>10} {'MFU':>6} {'peak GiB':>8}")
    for method in methods:
        if not os.path.exists(os.path.join(ROOT, METHODS[method])):
            print(f"{method:8} skipped: {METHODS[method]} does not exist")
            continue
        r = bench(method, args)
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        print(f"{r['method']:8} {r['model']:30} {r['img']:>4} {r['batch']:>5} {r['compile_s']:>9.1f} "
              f"{r['step_s']:>8.3f} {r['images_per_s']:>8.1f} {r['tflops']:>10.4g} {mfu:>6} "
              f"{r['memory_gib']:>8.2f}  ({r['memory_kind']}; loss {r['loss']:.4g})", flush=True)


if __name__ == "__main__":
    main()
