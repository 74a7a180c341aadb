"""What DOFA's wavelength-conditioned patch embedding costs against a fixed patch embedding.

    python benchmarks/dofa_embed.py                          # 13 bands, 224 px, batch 8, 5 rounds
    python benchmarks/dofa_embed.py --rounds=3 --depth=4     # quicker

Forward + backward (gradients of every parameter) of (a) geossl's ViT-S/14 (``vit_small_patch14``
without LayerScale, whose blocks then match DOFA's) and (b) DOFA-S
(``dofa_small_patch16_224`` with ``patch_size=14``), at the same depth, width and token grid. The
only difference is the patch embedding: a p×p conv (a) or the hypernetwork that generates it from
the 13 Sentinel-2 wavelengths (b), plus DOFA's mean pool + ``fc_norm`` head. Each round runs
(a) then (b), one timed step each, after a warm-up step of each. The script prints the median and
min–max of each side, the ratio of the medians, and each compiled step's
``memory_analysis()`` (temporaries, arguments). One device of the default backend.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from geossl import models  # noqa: E402
from geossl.data import bands  # noqa: E402


def compiled_step(model, x, call_kw):
    """(compiled fn(params) → (loss, grads), params): mean squared embedding, every gradient."""
    params = jax.jit(model.init)(jax.random.key(0), x[:1])["params"]

    def loss(p):
        out = model.apply({"params": p}, x, **call_kw)["embedding"]
        return jnp.mean(jnp.square(out.astype(jnp.float32)))

    return jax.jit(jax.value_and_grad(loss)).lower(params).compile(), params


def memory_line(compiled) -> str:
    mem = compiled.memory_analysis()
    if mem is None:
        return "memory_analysis: not available on this backend"
    mib = 1 / 2**20
    return (f"temp {mem.temp_size_in_bytes * mib:8.1f} MiB  arguments "
            f"{mem.argument_size_in_bytes * mib:6.1f} MiB  outputs {mem.output_size_in_bytes * mib:6.1f} MiB")


def timed(fn, params) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(params))
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="timed rounds, each side once per round")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--depth", type=int, default=12)
    args = p.parse_args()

    names = bands.S2_L1C
    w = jnp.asarray(bands.wavelengths(names))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(args.batch, args.img, args.img, len(names))),
                    jnp.float32)
    structure = dict(img_size=args.img, depth=args.depth)
    sides = {
        "ViT-S/14 (fixed conv)": compiled_step(
            models.create("vit_small_patch14", in_chans=len(names), layerscale_init=None, **structure),
            x, {}),
        "DOFA-S/14 (wavelengths)": compiled_step(
            models.create("dofa_small_patch16_224", patch_size=14, **structure), x, {"wavelengths": w}),
    }
    times = {k: [] for k in sides}
    for fn, params in sides.values():
        timed(fn, params)  # warm-up
    for _ in range(args.rounds):
        for name, (fn, params) in sides.items():
            times[name].append(timed(fn, params))

    print(f"forward+backward, batch {args.batch}, {args.img} px, {len(names)} bands, depth "
          f"{args.depth}, {args.rounds} alternating rounds, backend {jax.default_backend()} "
          f"({jax.device_count()} device(s), {os.cpu_count()} CPUs)")
    for name, (fn, params) in sides.items():
        t = times[name]
        count = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(params))
        print(f"  {name:26s} median {statistics.median(t):7.3f} s  min-max {min(t):.3f}-{max(t):.3f} s"
              f"  params {count / 1e6:6.2f} M  {memory_line(fn)}")
    (vit_name, dofa_name) = list(sides)
    ratio = statistics.median(times[dofa_name]) / statistics.median(times[vit_name])
    print(f"  step ratio DOFA / ViT (medians): {ratio:.3f}  (wavelength embedding overhead "
          f"{100 * (ratio - 1):+.1f}% of the ViT step)")


if __name__ == "__main__":
    main()
