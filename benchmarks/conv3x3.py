"""ResNet-50's 3×3 convolutions, forward + input and weight gradients, XLA:CPU against PyTorch.

    python benchmarks/conv3x3.py                     # the seven 3×3 shapes of ResNet-50, batch 16
    python benchmarks/conv3x3.py --parts             # forward, input gradient, weight gradient apart
    python benchmarks/conv3x3.py --xla_options "xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"

geossl side: ``lax.conv_general_dilated`` (NHWC / HWIO, padding 1, as ``models.resnet``), the
gradient of Σ y² · 1e-3 to x and w in one ``jax.jit``, compiled with the train step's CPU options
(``parallel.cpu_options``) plus any ``--xla_options``. PyTorch side: ``F.conv2d`` on channels-last
tensors and autograd, ``--torch_threads`` threads. The sides take turns; each row prints the
median (min–max) of ``--rounds`` timed calls in ms, GFLOP/s at the median, and PyTorch's time
over XLA's (> 1: XLA is faster). The last line sums a ResNet-50 forward + backward's sixteen 3×3
convolutions (stage counts 3, 4, 6, 3; the first of stages 2–4 strided).
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

from backbone_step import parse_options  # noqa: E402
from train_step import step_times  # noqa: E402

#: (input size, in channels, out channels, stride, how many of them in ResNet-50)
SHAPES = [(56, 64, 64, 1, 3), (56, 128, 128, 2, 1), (28, 128, 128, 1, 3), (28, 256, 256, 2, 1),
          (14, 256, 256, 1, 5), (14, 512, 512, 2, 1), (7, 512, 512, 1, 2)]


def xla_side(x: np.ndarray, w: np.ndarray, stride: int, options: dict, part: str):
    """A call that runs the compiled ``part`` ("all": (dx, dw) of Σ y²·1e-3; "fwd": y; "dx",
    "dw": the gradient for the cotangent ``cotangent(...)``), waits for it and returns it."""
    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (stride, stride), ((1, 1), (1, 1)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    xj, wj = jnp.asarray(x), jnp.asarray(w)
    dy = jnp.asarray(cotangent(jax.eval_shape(conv, xj, wj).shape))
    fns = {"all": (lambda x, w, dy: jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2) * 1e-3,
                                             argnums=(0, 1))(x, w)),
           "fwd": lambda x, w, dy: conv(x, w),
           "dx": lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0],
           "dw": lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0]}
    compiled = jax.jit(fns[part]).lower(xj, wj, dy).compile(options or None)
    return lambda: jax.block_until_ready(compiled(xj, wj, dy))


def cotangent(shape) -> np.ndarray:
    """The output gradient of the "dx" / "dw" parts: (B, H', W', C_out) float32, seeded."""
    return np.random.default_rng(1).standard_normal(shape).astype(np.float32)


def torch_side(x: np.ndarray, w: np.ndarray, stride: int, part: str):
    """The same ``part`` in PyTorch (NCHW tensors in channels-last memory, OIHW weights)."""
    import torch
    F = torch.nn.functional
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    wt = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous()
    out_shape = F.conv2d(xt[:1], wt, stride=stride, padding=1).shape
    n, c, h, w_ = out_shape
    dy = torch.from_numpy(cotangent((x.shape[0], h, w_, c))).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last)

    def run_all():
        xg, wg = xt.detach().requires_grad_(True), wt.detach().requires_grad_(True)
        y = F.conv2d(xg, wg, stride=stride, padding=1)
        ((y * y).sum() * 1e-3).backward()
        return xg.grad, wg.grad

    parts = {"all": run_all,
             "fwd": lambda: F.conv2d(xt, wt, stride=stride, padding=1),
             "dx": lambda: torch.nn.grad.conv2d_input(xt.shape, wt, dy, stride=stride, padding=1),
             "dw": lambda: torch.nn.grad.conv2d_weight(xt, wt.shape, dy, stride=stride, padding=1)}
    if part == "all":
        return run_all

    def no_grad():
        with torch.no_grad():
            return parts[part]()
    return no_grad


def in_turns(calls: dict, warmup: int, rounds: int) -> dict:
    """{name: [seconds per round]}: one call of each side per round, the sides in turns."""
    for call in calls.values():
        step_times(call, warmup, 0)
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times[name] += step_times(call, 0, 1)
    return times


def flops(hw: int, cin: int, cout: int, stride: int, batch: int, part: str) -> float:
    out = -(-hw // stride)
    one = 2.0 * batch * out * out * 9 * cin * cout
    return one * (3 if part == "all" else 1)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--torch_threads", type=int, default=os.cpu_count())
    p.add_argument("--parts", action="store_true",
                   help="time forward, input gradient and weight gradient apart")
    p.add_argument("--xla_options", default="", help="extra XLA options, 'name=value;...'")
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(args.torch_threads)
    from geossl.parallel import cpu_options
    options = {**(cpu_options.step_compiler_options(jax.devices()) or {}),
               **parse_options(args.xla_options)}
    parts = ("fwd", "dx", "dw") if args.parts else ("all",)
    rng = np.random.default_rng(0)
    print(f"3x3 convolutions, batch {args.batch}, float32, {os.cpu_count()} CPUs; XLA options "
          f"{options or 'default'}; torch {torch.__version__}, {args.torch_threads} threads")
    print(f"{'shape':<22}{'part':<6}{'XLA ms (min-max)':>22}{'GFLOP/s':>9}"
          f"{'torch ms (min-max)':>22}{'GFLOP/s':>9}{'torch/XLA':>11}")
    total = {"xla": 0.0, "torch": 0.0}
    for hw, cin, cout, stride, count in SHAPES:
        x = rng.standard_normal((args.batch, hw, hw, cin)).astype(np.float32)
        w = (rng.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin)).astype(np.float32)
        for part in parts:
            times = in_turns({"xla": xla_side(x, w, stride, options, part),
                              "torch": torch_side(x, w, stride, part)}, args.warmup, args.rounds)
            med = {k: float(np.median(v)) for k, v in times.items()}
            f = flops(hw, cin, cout, stride, args.batch, part)
            cells = "".join(
                f"{med[k] * 1e3:>9.1f} ({min(v) * 1e3:.1f}-{max(v) * 1e3:.1f})".rjust(22)
                + f"{f / med[k] / 1e9:>9.0f}" for k, v in times.items())
            print(f"{f'{hw}² x {cin}->{cout} s{stride}':<22}{part:<6}{cells}"
                  f"{med['torch'] / med['xla']:>11.2f}")
            for k in total:
                total[k] += count * med[k]
    print(f"ResNet-50's sixteen 3x3 convolutions ({'+'.join(parts)}), summed medians: XLA "
          f"{total['xla'] * 1e3:.0f} ms, torch {total['torch'] * 1e3:.0f} ms, torch/XLA "
          f"{total['torch'] / total['xla']:.2f}")


if __name__ == "__main__":
    main()
