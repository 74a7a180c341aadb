"""A bare backbone step through geossl's public API against the same step in PyTorch: what a user who
writes their own training loop gets.

    python benchmarks/backbone_step.py --arch vit_small_patch14 --batch 8 --img 224 --bands 13 --steps 5
    python benchmarks/backbone_step.py --arch resnet50
    python benchmarks/backbone_step.py --arch resnet50 --step_options_in_xla_flags
    python benchmarks/backbone_step.py --arch swin_tiny_patch4_window7_224
    python benchmarks/backbone_step.py --arch vit_small_patch14 --dtype bfloat16 --step_options_in_xla_flags
    python benchmarks/backbone_step.py --xla_options "xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED" --xla_options ""

geossl: ``geossl.models.create(arch, in_chans=C, img_size=S)``, its pooled embedding of two views
(B, C, S, S each), symmetric InfoNCE between them (``geossl.losses.info_nce_loss``, τ 0.2),
``optax.adamw`` (lr 1e-4, weight decay 0.05), one ``jax.jit`` step (donated state). PyTorch: timm
ViT-S/14 DINOv2 / Swin-T or torchvision ResNet-50 (stem for C bands, no fc), the same loss written
in torch, ``torch.optim.AdamW``; BatchNorm in training mode on both sides. Each ``--xla_options``
("name=value;name=value", XLA debug options) adds a geossl row compiled with them (one process:
the lever is measured against the default build on the same host). float32, all cores; the sides
take turns, median (min–max) of --steps rounds. ``--dtype bfloat16``: geossl's model ``dtype``
and ``torch.autocast("cpu", torch.bfloat16)`` around the twin's forward (parameters, loss and
optimiser float32 on both sides; "% peak" stays a share of the float32 matmul peak).
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import train_step  # noqa: E402
from twins import common  # noqa: E402

TAU, LR, WD = 0.2, 1e-4, 0.05


def parse_options(text: str) -> dict:
    """"a=1;b=true;c=x" → {"a": 1, "b": True, "c": "x"}; "" → {} (the default build)."""
    pairs = [p.strip() for p in text.split(";") if p.strip()]
    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise SystemExit(f"--xla_options: expected name=value pairs separated by ';', found {bad}")
    def value(text):
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        return int(text) if text.lstrip("-").isdigit() else text
    return {name: value(v) for name, v in (p.split("=", 1) for p in pairs)}


def views(args) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (args.batch, args.img, args.img, args.bands)
    return rng.random(shape, np.float32), rng.random(shape, np.float32)


def geossl_side(args, options: dict) -> dict:
    """One jitted step of models.create(arch) + InfoNCE + optax.adamw, compiled with ``options``."""
    import optax
    from geossl import losses, models
    kw = dict(in_chans=args.bands, img_size=args.img, dtype=jnp.dtype(args.dtype))
    if args.arch.startswith("swin"):
        kw["window_size"] = common.swin_window(args.img)
    model = models.create(args.arch, **kw)
    x1, x2 = (jnp.asarray(v) for v in views(args))
    variables = model.init(jax.random.PRNGKey(0), x1[:1], train=False)
    params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    tx = optax.adamw(LR, weight_decay=WD)

    def embed(params, rest, x):
        out, updates = model.apply({"params": params, **rest}, x, train=True,
                                   mutable=list(rest))
        return out["embedding"].astype(jnp.float32), updates

    def loss_fn(params, rest):
        z1, rest = embed(params, rest, x1)
        z2, rest = embed(params, rest, x2)
        loss = 0.5 * (losses.info_nce_loss(z1, z2, temperature=TAU)
                      + losses.info_nce_loss(z2, z1, temperature=TAU))
        return loss, rest

    def step(params, rest, opt_state):
        (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), rest, opt_state, loss

    state = [params, rest, tx.init(params)]
    import time
    t = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1, 2)).lower(*state).compile(
        compiler_options=options or None)
    compile_s = time.perf_counter() - t
    out = {}

    def run():
        *state[:], out["loss"] = jax.block_until_ready(compiled(*state))

    label = ";".join(f"{k}={v}" for k, v in options.items()) or "default"
    return dict(side="geossl (jax)", row=label, compile_s=compile_s,
                flops=train_step.step_flops(compiled), step=run, loss=lambda: float(out["loss"]))


def torch_side(args) -> dict:
    import torch
    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    net, _, lib = common.backbone(torch, args.arch, args.img, args.bands)
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WD)
    x1, x2 = (torch.from_numpy(v).permute(0, 3, 1, 2).contiguous() for v in views(args))
    F = torch.nn.functional
    out = {}

    def info_nce(q, k):
        logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / TAU
        return F.cross_entropy(logits, torch.arange(len(q)))

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    def run():
        with autocast:
            z1, z2 = net(x1), net(x2)
        z1, z2 = z1.float(), z2.float()
        loss = 0.5 * (info_nce(z1, z2) + info_nce(z2, z1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        out["loss"] = loss.detach()

    return dict(side=f"PyTorch ({lib})", row="same math", compile_s=float("nan"), step=run,
                loss=lambda: float(out["loss"]), torch_flops=train_step.torch_flops(torch, run))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="vit_small_patch14",
                   choices=("vit_small_patch14", "resnet50", "swin_tiny_patch4_window7_224"))
    p.add_argument("--batch", type=int, default=8, help="samples (two views each)")
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--bands", type=int, default=13)
    p.add_argument("--steps", type=int, default=5, help="timed rounds")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--torch_threads", type=int, default=os.cpu_count())
    p.add_argument("--peak_size", type=int, default=2048)
    p.add_argument("--xla_options", action="append", default=None,
                   help="XLA options of one geossl row, 'name=value;...' ('' = default; repeatable)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="compute dtype: geossl's model dtype (parameters stay float32) and "
                        "torch.autocast('cpu', bfloat16) around the twin's forward")
    p.add_argument("--step_options_in_xla_flags", action="store_true",
                   help="cpu_options.set_step_options_in_xla_flags() first: every row's plain "
                        "jax.jit compiles with the train step's XLA:CPU options, as a user's own "
                        "loop after that one call")
    train_step.add_malloc_flag(p)
    args = p.parse_args(argv)
    train_step.apply_malloc(args)
    title = "backbone + InfoNCE + AdamW step through the public API"
    if args.step_options_in_xla_flags:
        from geossl.parallel import cpu_options
        applied = cpu_options.set_step_options_in_xla_flags()
        title += ", XLA_FLAGS with the step's options" if applied else ", XLA_FLAGS unchanged (refused)"
    args.method = "backbone"
    peak, peak_lib = train_step.matmul_peak(args.peak_size)
    rows = [geossl_side(args, parse_options(o)) for o in (args.xla_options or [""])]
    rows.append(torch_side(args))
    train_step.interleaved_times(rows, args.warmup, args.steps)
    lines = train_step.table(args, rows, peak, peak_lib, title)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
