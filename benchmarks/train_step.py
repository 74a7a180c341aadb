"""geossl vs PyTorch: images/s of one training step of the same model and loss on the same CPU.

    python benchmarks/train_step.py --arch vit_small_patch14 --batch 8 --img 224 --bands 13
    python benchmarks/train_step.py --arch resnet50 --batch 8 --img 224 --bands 13

Step = two views → backbone embeddings → soft contrastive loss (REFERENCE §1, one direction, the
student's view against the other) → backward → AdamW update. geossl: one jitted function; PyTorch:
timm / torchvision model in train mode with torch.optim.AdamW. Prints images/s and the ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

TIMM_NAMES = {"vit_small_patch14": "vit_small_patch14_dinov2", "vit_base_patch14": "vit_base_patch14_dinov2"}


def data(batch, img, bands, classes=9):
    rng = np.random.default_rng(0)
    x1 = rng.random((batch, img, img, bands), np.float32)
    x2 = rng.random((batch, img, img, bands), np.float32)
    y1 = (rng.random((batch, classes)) < 0.3).astype(np.float32)
    y2 = (rng.random((batch, classes)) < 0.3).astype(np.float32)
    return x1, x2, y1, y2


def bench_geossl(arch, batch, img, bands, steps, dtype):
    import jax
    import jax.numpy as jnp
    import optax
    from geossl import losses, models
    kw = {"img_size": img} if arch.startswith("vit") else {}
    model = models.create(arch, in_chans=bands, dtype=getattr(jnp, dtype), **kw)
    x1, x2, y1, y2 = data(batch, img, bands)
    variables = model.init(jax.random.PRNGKey(0), x1[:1])
    params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    tx = optax.adamw(1e-4, weight_decay=0.05)
    opt = tx.init(params)

    def loss_fn(p, state, x1, x2, y1, y2):
        mutable = list(state)
        out1, new = model.apply({"params": p, **state}, x1, train=True, mutable=mutable)
        out2, new = model.apply({"params": p, **new}, x2, train=True, mutable=mutable)
        loss = losses.soft_contrastive_loss(out1["embedding"], out2["embedding"], y1, y2,
                                            temperature=0.2, soft_weight=1.0)
        return loss, new

    @jax.jit
    def step(p, opt, state, x1, x2, y1, y2):
        (loss, state), g = jax.value_and_grad(loss_fn, has_aux=True)(p, state, x1, x2, y1, y2)
        u, opt = tx.update(g, opt, p)
        return optax.apply_updates(p, u), opt, state, loss

    args = [jnp.asarray(a) for a in (x1, x2, y1, y2)]
    params, opt, state, loss = step(params, opt, state, *args)  # compile
    jax.block_until_ready(loss)
    t = time.perf_counter()
    for _ in range(steps):
        params, opt, state, loss = step(params, opt, state, *args)
    jax.block_until_ready(loss)
    return batch * 2 * steps / (time.perf_counter() - t)


def torch_soft_contrastive(q, k, yq, yk, tau=0.2, lam=1.0):
    import torch
    import torch.nn.functional as F
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    logits = q @ k.T / tau
    logp = F.log_softmax(logits, dim=1)
    inst = -logp.diagonal().mean()
    s = F.normalize(yq, dim=1, eps=1e-12) @ F.normalize(yk, dim=1, eps=1e-12).T
    rows = s.sum(1)
    keep = rows > 0
    if keep.any():
        st = s[keep] / rows[keep, None]
        soft = -(st * logp[keep]).sum(1).mean()
    else:
        soft = torch.zeros((), dtype=q.dtype)
    return inst + lam * soft


def bench_torch(arch, batch, img, bands, steps, threads):
    import torch
    torch.set_num_threads(threads)
    if arch.startswith("vit"):
        import timm
        model = timm.create_model(TIMM_NAMES[arch], pretrained=False, img_size=img, in_chans=bands,
                                  num_classes=0)
    else:
        import torchvision
        model = getattr(torchvision.models, arch)()
        model.conv1 = torch.nn.Conv2d(bands, 64, 7, 2, 3, bias=False)
        model.fc = torch.nn.Identity()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    x1, x2, y1, y2 = (torch.from_numpy(a) for a in data(batch, img, bands))
    x1, x2 = x1.permute(0, 3, 1, 2).contiguous(), x2.permute(0, 3, 1, 2).contiguous()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch_soft_contrastive(model(x1), model(x2), y1, y2)
        loss.backward()
        opt.step()

    step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * 2 * steps / (time.perf_counter() - t)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="vit_small_patch14")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--bands", type=int, default=13)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args()
    g = bench_geossl(args.arch, args.batch, args.img, args.bands, args.steps, args.dtype)
    t = bench_torch(args.arch, args.batch, args.img, args.bands, args.steps, args.threads)
    print(f"{args.arch} {args.bands} bands {args.img}px batch {args.batch}x2 views, {args.steps} steps, "
          f"{os.cpu_count()} CPU cores")
    print(f"{'geossl (jax)':>14s} {'pytorch':>10s} {'ratio':>7s}")
    print(f"{g:10.2f} im/s {t:6.2f} im/s {g / t:7.2f}")


if __name__ == "__main__":
    main()
