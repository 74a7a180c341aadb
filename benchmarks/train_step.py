"""geossl's real SoftCon train step against the same step written in PyTorch, on this machine.

    python benchmarks/train_step.py --arch vit_small_patch14 --batch 8 --img 224 --bands 13 --steps 3
    python benchmarks/train_step.py --arch resnet50 --batch 8 --img 224 --bands 13 --steps 3
    python benchmarks/train_step.py --arch swin_tiny_patch4_window7_224 --batch 8 --img 224 --steps 3

geossl: the trainer's own step. The config main.py loads (configs/softcon_vit_s.py or
configs/softcon_rn50.py, same ml_collections parser) with model.img_size, model.in_chans,
global_batch, data.views="host" and objective.mask_ratio overridden → objectives.create →
make_mesh → loop.build_trainer → init_state; train_step is compiled ahead of time once (compile time
reported apart) and that executable is timed on make_views samples of synthetic records placed with
multihost.global_batch, at mask ratio 0 and at the config's ratio.
Swin-T: the ViT-S config (AdamW) with the backbone swapped, window 7 (or the largest window <= 7
that tiles every stage at --img), pixel-square masking as for ResNets; timm's swin on the PyTorch side.
PyTorch: timm vit_small_patch14_dinov2 / torchvision resnet50 (conv1 for C bands, no fc), MoCo-v3
projector and predictor (BatchNorm1d, sizes from config.objective), EMA teacher (backbone +
projector, no grad, updated after the optimiser step), the symmetrised soft contrastive loss
(geossl.losses, REFERENCE §1), AdamW (geossl keeps its config's optimiser: LARS for ResNet-50).
Both float32 on all cores; the sides take turns (a drifting host slows both alike): step time =
median over --steps rounds, each side running an untimed then a timed step, after --warmup;
images/s = samples (two views each) per second, like the trainer's metrics. FLOPs per step: XLA's
cost analysis of the geossl executable, reused for PyTorch (same math at mask 0); peak = best n³
fp32 matmul of numpy and jax.
On a loaded machine PyTorch's OpenMP threads wait on busy cores: compare --torch_threads 1.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

CONFIGS = {"vit_small_patch14": "configs/softcon_vit_s.py", "resnet50": "configs/softcon_rn50.py",
           "swin_tiny_patch4_window7_224": "configs/softcon_vit_s.py"}


def swin_window(img: int) -> int:
    """Largest window <= 7 that tiles all 4 stages of a patch-4 Swin at ``img`` px (7 at 224)."""
    return next(w for w in range(7, 0, -1) if all((img // 4 >> i) % min(w, img // 4 >> i) == 0 for i in range(4)))


def load_config(arch: str, img: int, bands: int, batch: int, mask_ratio: float | None):
    """The config file main.py's --config flag would load (same ml_collections parser), plus the
    benchmark's overrides. mask_ratio None keeps the config's."""
    from ml_collections.config_flags.config_flags import ConfigFileFlagParser
    from configs import common
    variant = ":sar" if bands == len(common.S1_BANDS) else ""
    config = ConfigFileFlagParser("config").parse(os.path.join(ROOT, CONFIGS[arch]) + variant)
    if bands not in (len(common.S1_BANDS), len(common.S2_L1C_BANDS)):
        config.data.bands = common.S2_L1C_BANDS[:bands]  # the first C bands of an L1C record
    config.model.img_size, config.model.in_chans = img, bands
    if arch.startswith("swin"):
        with config.unlocked():
            config.model.name, config.model.window_size = arch, swin_window(img)
    config.global_batch, config.data.views = batch, "host"
    if mask_ratio is not None:
        config.objective.mask_ratio = mask_ratio
    return config


def synthetic_batch(config, objective, seasons: int = 4) -> dict:
    """(B, ...) numpy arrays of objective.make_views samples of random uint16 records."""
    rng = np.random.default_rng(0)
    size = int(round(config.model.img_size * 264 / 224))  # SSL4EO-S12 scenes: 264 px for 224 crops
    bands, k = list(config.data.bands), int(config.data.num_classes)
    sensor = "s1_grd" if bands[0] == "VV" else "s2_l1c"
    samples = []
    for i in range(config.global_batch):
        record = {"image": rng.integers(0, 4000, (seasons, size, size, len(bands)), dtype=np.uint16),
                  "labels": np.array([0, 1], np.int64), "bands": bands, "sensor": sensor,
                  "key": f"bench-{i}", "label_set": "dynamic_world_9",
                  "acq_labels": (rng.random(seasons * k) < 0.3).astype(np.int64),
                  "num_classes": np.array([k], np.int64)}
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


def compiled_step(args, mask_ratio):
    """The trainer's step for ``args`` at ``mask_ratio``, compiled ahead of time: a dict of
    config, host_batch (numpy), batch (placed), state, compiled (the executable the loop runs)
    and compile_s."""
    from geossl import objectives
    from geossl.parallel import mesh as mesh_lib
    from geossl.parallel import multihost
    from geossl.train.loop import build_trainer
    config = load_config(args.arch, args.img, args.bands, args.batch, mask_ratio)
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


def geossl_side(args, mask_ratio):
    """(config, host batch, side) of the trainer's step at ``mask_ratio``; side = dict(step=a
    closure running one step to completion, check=raises if the loss is not finite, row fields)."""
    built = compiled_step(args, mask_ratio)
    compiled, batch = built["compiled"], built["batch"]
    out = {"state": built["state"]}

    def step():
        out["state"], out["metrics"] = jax.block_until_ready(compiled(out["state"], batch))

    def check():
        if not np.isfinite(float(out["metrics"]["loss"])):
            raise FloatingPointError(f"geossl step at mask ratio {mask_ratio}: {out['metrics']}")

    side = dict(side="geossl (jax)", mask=built["config"].objective.mask_ratio,
                compile_s=built["compile_s"], flops=step_flops(compiled), step=step, check=check)
    return built["config"], built["host_batch"], side


# ----- PyTorch ----------------------------------------------------------------------------------
def torch_mlp(torch, in_dim, hidden, out, layers, last_bn):
    """MoCo-v3 MLP: Linear(no bias) → BN → ReLU per hidden layer, last Linear (+ BN without affine)."""
    nn, mods = torch.nn, []
    for i in range(layers):
        last = i == layers - 1
        mods.append(nn.Linear(in_dim if i == 0 else hidden, out if last else hidden, bias=False))
        if not last:
            mods += [nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        elif last_bn:
            mods.append(nn.BatchNorm1d(out, affine=False))
    return nn.Sequential(*mods)


def torch_backbone(torch, arch, img, bands):
    if arch.startswith("vit"):
        import timm
        net = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=img,
                                in_chans=bands, num_classes=0)
        return net, net.num_features, "timm"
    if arch.startswith("swin"):
        import timm
        net = timm.create_model(arch, pretrained=False, img_size=img, window_size=swin_window(img),
                                in_chans=bands, num_classes=0, drop_path_rate=0.0)
        return net, net.num_features, "timm"
    import torchvision
    net = torchvision.models.resnet50()
    net.conv1 = torch.nn.Conv2d(bands, 64, kernel_size=7, stride=2, padding=3, bias=False)
    dim, net.fc = net.fc.in_features, torch.nn.Identity()
    return net, dim, "torchvision"


def torch_soft_contrastive(torch, q, k, yq, yk, tau, lam):
    """geossl.losses.soft_contrastive_loss, soft_loss="ce", one direction."""
    F = torch.nn.functional
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / tau
    log_p = F.log_softmax(logits, dim=1)
    instance = -log_p.diagonal().mean()
    sim = F.normalize(yq, dim=1) @ F.normalize(yk, dim=1).T  # empty label rows stay 0
    row_sum = sim.sum(1)
    rows = row_sum > 0
    target = sim / torch.where(rows, row_sum, torch.ones_like(row_sum))[:, None]
    per_row = torch.where(rows, -(target * log_p).sum(1), torch.zeros_like(row_sum))
    return instance + lam * per_row.sum() / rows.sum().clamp(min=1)


def torch_side(args, config, host_batch):
    """The same SoftCon step in PyTorch as a side (see ``geossl_side``)."""
    import torch
    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    o = config.objective
    backbone, dim, lib = torch_backbone(torch, args.arch, args.img, args.bands)
    encoder = torch.nn.Sequential(backbone, torch_mlp(torch, dim, o.proj_hidden,
                                                      o.proj_dim, o.proj_layers, last_bn=True))
    predictor = torch_mlp(torch, o.proj_dim, o.pred_hidden, o.proj_dim, o.pred_layers, last_bn=False)
    teacher = copy.deepcopy(encoder).requires_grad_(False)
    for m in (encoder, predictor, teacher):
        m.train()
    named = list(encoder.named_parameters()) + list(predictor.named_parameters())
    no_decay = ("pos_embed", "cls_token", "mask_token", "register_tokens",  # as geossl's decay mask
                "relative_position_bias_table")
    decays = {n: p.ndim > 1 and not n.endswith(no_decay) for n, p in named}
    decay, rest = ([p for n, p in named if decays[n] == d] for d in (True, False))
    c = config.optim  # AdamW with the config's values (its LARS for ResNet-50 has none in torch)
    wd = c.weight_decay["base"] if hasattr(c.weight_decay, "keys") else c.weight_decay  # schedule?
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}],
                            lr=config.lr.base, betas=(c.get("b1", 0.9), c.get("b2", 0.999)))
    x1, x2 = (torch.from_numpy(host_batch[k]).permute(0, 3, 1, 2).contiguous()
              for k in ("view1", "view2"))
    y1, y2 = (torch.from_numpy(host_batch[k]).float() for k in ("labels1", "labels2"))
    tau, lam, momentum = float(o.temperature), float(o.soft_weight), float(config.ema.base)
    out = {}

    def step():
        q1, q2 = predictor(encoder(x1)), predictor(encoder(x2))
        with torch.no_grad():
            k1, k2 = teacher(x1), teacher(x2)
        out["loss"] = loss = 0.5 * (torch_soft_contrastive(torch, q1, k2, y1, y2, tau, lam)
                                    + torch_soft_contrastive(torch, q2, k1, y2, y1, tau, lam))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for t, s in zip(teacher.parameters(), encoder.parameters()):
                t.lerp_(s, 1.0 - momentum)

    def check():
        if not torch.isfinite(out["loss"]):
            raise FloatingPointError(f"PyTorch step: loss {out['loss']}")

    return dict(side=f"PyTorch ({lib})", mask=0.0, compile_s=float("nan"), flops=float("nan"),
                step=step, check=check)


def interleaved_times(sides, warmup: int, steps: int) -> None:
    """Times the sides in turns, so that a machine whose speed drifts (a shared or virtual host)
    slows every side alike: ``warmup`` untimed steps of each, then ``steps`` rounds in which each
    side runs one untimed step (it takes the cost of the previous side's freed memory and idle
    threads) and one timed step. Sets each side's ``step_s`` to the median of its timed steps."""
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
        side["check"]()
        side["step_s"] = statistics.median(record)


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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="vit_small_patch14", choices=sorted(CONFIGS))
    p.add_argument("--batch", type=int, default=8, help="global batch (samples of two views)")
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--bands", type=int, default=13)
    p.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after compilation")
    p.add_argument("--torch_threads", type=int, default=os.cpu_count(),
                   help="PyTorch intra-op threads (default: all cores, like XLA)")
    p.add_argument("--peak_size", type=int, default=2048, help="n of the n³ peak matmul")
    args = p.parse_args()

    peak, peak_lib = matmul_peak(args.peak_size)
    config, host_batch, base = geossl_side(args, 0.0)
    rows = [base]
    ratio = float(load_config(args.arch, args.img, args.bands, args.batch, None).objective.mask_ratio)
    if ratio > 0:
        rows.append(geossl_side(args, ratio)[2])
    rows.append(dict(torch_side(args, config, host_batch), flops=base["flops"]))
    interleaved_times(rows, args.warmup, args.steps)

    print(f"SoftCon train step: {args.arch}, {args.bands} bands, {args.img} px, batch {args.batch} "
          f"(2 views each), float32, {os.cpu_count()} CPU cores (PyTorch threads {args.torch_threads}), "
          f"jax backend {jax.default_backend()}")
    print(f"peak: {peak / 1e9:.1f} GFLOP/s ({peak_lib} fp32 matmul {args.peak_size}³, best of 3)")
    print("FLOPs/step: XLA cost analysis of the compiled geossl step; the PyTorch row reuses the "
          "mask-0 count (same math)")
    print(f"optimiser: geossl {config.optim.name} (the config's), PyTorch adamw (elementwise, "
          f"a small share of the step)")
    print(f"step time: median of {args.steps} rounds (per side one untimed + one timed step) after "
          f"{args.warmup} warm-up; images/s = samples/s")
    print(f"{'side':22s} {'mask':>5s} {'compile s':>9s} {'step ms':>9s} {'images/s':>9s} "
          f"{'GFLOP/step':>10s} {'GFLOP/s':>8s} {'% peak':>6s}")
    for r in rows:
        rate = r["flops"] / r["step_s"]
        compile_s = "-" if np.isnan(r["compile_s"]) else f"{r['compile_s']:.1f}"
        print(f"{r['side']:22s} {r['mask']:5.2f} {compile_s:>9s} {r['step_s'] * 1e3:9.1f} "
              f"{args.batch / r['step_s']:9.2f} {r['flops'] / 1e9:10.2f} {rate / 1e9:8.1f} "
              f"{100 * rate / peak:6.1f}")
    print(f"ratio geossl / PyTorch images/s at mask 0: {rows[-1]['step_s'] / base['step_s']:.2f}")


if __name__ == "__main__":
    main()
