"""Where the time of a method's train step goes: jax's profiler over the trainer's own compiled step
(built as benchmarks/train_step.py builds it), each XLA operation's time grouped by kind.

    python benchmarks/profile_step.py --arch vit_small_patch14 --batch 8 --img 224 --bands 13
    python benchmarks/profile_step.py --arch resnet50 --batch 8 --img 224 --bands 13
    python benchmarks/profile_step.py --method pera --batch 2 --img 112
    python benchmarks/profile_step.py --arch vit_small_patch14 --xla_options ""

The profiler records one event per executed operation (``hlo_op``: an instruction of the optimised
HLO module). Each is classed by what it computes: its opcode, or for a fusion the heaviest
operation inside it (convolution > dot > reduce-window > reduce > gather/scatter > elementwise;
fusions that only transpose, copy, pad or slice are "copy / transpose").
Times are per step, summed over threads (operations that run side by side both count), beside the
step's wall time. ``--xla_options "name=value;..."`` compiles the step with those XLA options
instead of the trainer's (``geossl.parallel.cpu_options``; "" is XLA's defaults). ``--top`` lists
the costliest operations with their shapes; ``--trace_dir`` keeps the trace for Perfetto /
TensorBoard.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

import train_step as bench  # noqa: E402
from backbone_step import parse_options  # noqa: E402

#: Fusion contents that decide a fusion's class, most telling first.
HEAVY = ("convolution", "dot", "reduce-window", "select-and-scatter", "reduce", "scatter",
         "gather", "sort")
#: Fusions made of these only move data.
MOVES = {"parameter", "transpose", "copy", "bitcast", "reshape", "broadcast", "slice", "concatenate",
         "pad", "tuple", "get-tuple-element", "constant", "reverse"}
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OPCODE = re.compile(r"(?:^|[\s}])([a-z][a-z0-9\-]*)\(")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_COMP = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")


def parse_hlo(text: str) -> dict[str, dict]:
    """Optimised HLO text → {instruction: {"opcode", "shape", "calls", "computation"}}, plus
    {computation: {"opcodes": set}} under the key ``"<computations>"``."""
    ops, comps, current = {}, collections.defaultdict(set), None
    for line in text.splitlines():
        m = _INSTR.match(line)
        if m is None:
            c = _COMP.match(line)
            if c:
                current = c.group(1)
            continue
        name, rest = m.groups()
        op = _OPCODE.search(rest)
        opcode = op.group(1) if op else "?"
        calls = _CALLS.search(rest)
        shape = rest[:op.start()].strip() if op else ""
        ops[name] = dict(opcode=opcode, shape=shape, calls=calls.group(1) if calls else None)
        comps[current].add(opcode)
    ops["<computations>"] = comps
    return ops


def op_class(name: str, ops: dict) -> str:
    """The class of the operation ``name`` (see the module docstring)."""
    info = ops.get(name)
    if info is None:
        return "other"
    if info["opcode"] in ("fusion", "call", "custom-call") and info["calls"]:
        inside = ops["<computations>"].get(info["calls"], set())
        for heavy in HEAVY:
            if heavy in inside:
                return heavy if heavy != "dot" else "dot (matmul)"
        if inside <= MOVES:
            return "copy / transpose"
        return "elementwise fusion"
    if info["opcode"] == "dot":
        return "dot (matmul)"
    if info["opcode"] in ("copy", "transpose"):
        return "copy / transpose"
    if info["opcode"].startswith("all-") or info["opcode"] in ("reduce-scatter", "collective-permute"):
        return "collective"
    return info["opcode"]


def op_times(trace_dir: str) -> dict[str, float]:
    """{hlo_op: total microseconds} over every operation event of the trace in ``trace_dir``."""
    files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    if not files:
        raise FileNotFoundError(f"profile_step: no *.trace.json.gz under {trace_dir}")
    events = json.load(gzip.open(max(files, key=os.path.getmtime)))
    events = events["traceEvents"] if isinstance(events, dict) else events
    out = collections.Counter()
    for e in events:
        op = (e.get("args") or {}).get("hlo_op")
        if e.get("ph") == "X" and op:
            out[op] += float(e.get("dur", 0.0))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="softcon", choices=bench.METHODS)
    p.add_argument("--arch", default="", help="backbone (default: the method's first)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--bands", type=int, default=13)
    p.add_argument("--mask_ratio", type=float, default=None,
                   help="config.objective.mask_ratio (default: SoftCon 0, others the config's)")
    p.add_argument("--steps", type=int, default=2, help="profiled steps (after one warm-up step)")
    p.add_argument("--top", type=int, default=12, help="costliest operations listed")
    p.add_argument("--xla_options", default=None,
                   help='"name=value;..." XLA options replacing the trainer\'s CPU options '
                        '("": none)')
    p.add_argument("--trace_dir", default="", help="keep the trace here (default: a temporary folder)")
    bench.add_malloc_flag(p)
    args = p.parse_args()
    bench.apply_malloc(args)
    args.arch = args.arch or bench.default_arch(args.method)
    if args.mask_ratio is None:
        args.mask_ratio = getattr(bench.twin(args.method), "SAVING", {}).get("objective.mask_ratio")
    overrides = {} if args.mask_ratio is None else {"objective.mask_ratio": args.mask_ratio}

    if args.xla_options is not None:
        from geossl.parallel import cpu_options
        cpu_options.CPU_STEP_OPTIONS = tuple(parse_options(args.xla_options).items())
    built = bench.compiled_step(args, overrides)
    compiled, state, batch = built["compiled"], built["state"], built["batch"]
    ops = parse_hlo(compiled.as_text())
    state, _ = jax.block_until_ready(compiled(state, batch))
    trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="geossl_profile_")
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    t = time.perf_counter()
    for _ in range(args.steps):
        state, _ = jax.block_until_ready(compiled(state, batch))
    wall = (time.perf_counter() - t) / args.steps
    jax.profiler.stop_trace()
    times = {k: v / args.steps / 1e3 for k, v in op_times(trace_dir).items()}  # ms per step
    total = sum(times.values())

    by_class = collections.Counter()
    for name, ms in times.items():
        by_class[op_class(name, ops)] += ms
    print(f"{args.method} train step profile: {args.arch}, {args.bands} bands, {args.img} px, batch "
          f"{args.batch}, mask {args.mask_ratio}, {os.cpu_count()} CPU cores, jax "
          f"{jax.__version__} {jax.default_backend()}, malloc {args.malloc}")
    print(f"wall {wall * 1e3:.1f} ms/step; operations {total:.1f} ms/step summed over threads "
          f"({len(times)} operations); trace: {trace_dir}")
    print(f"{'class':24s} {'ms/step':>9s} {'share':>6s}")
    for name, ms in by_class.most_common():
        print(f"{name:24s} {ms:9.1f} {100 * ms / total:5.1f}%")
    print(f"\ncostliest {args.top} operations:")
    print(f"{'operation':34s} {'class':20s} {'ms/step':>8s}  shape")
    for name, ms in sorted(times.items(), key=lambda kv: -kv[1])[:args.top]:
        shape = ops.get(name, {}).get("shape", "")
        print(f"{name[:34]:34s} {op_class(name, ops)[:20]:20s} {ms:8.1f}  {shape[:60]}")


if __name__ == "__main__":
    main()
