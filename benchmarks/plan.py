"""Capacity planner: will a config's train step fit a TPU / GPU slice, and how long will it take?

    python benchmarks/plan.py --config=configs/softcon_vit_b.py --devices 8 --chip v4
    python benchmarks/plan.py --config=configs/gfm_swin_b.py --devices 8 --chip all --mfu 0.3
    python benchmarks/plan.py --config=configs/pera_vit_b.py --devices 8 --chip v5e,h100 \
        --config.model.dtype=bfloat16

The trainer's own step (``loop.build_trainer`` on ``config.mesh`` over ``--devices`` simulated CPU
devices, the objective's own samples for the input shapes) is lowered with abstract inputs
(``jax.ShapeDtypeStruct`` with their shardings) and compiled; nothing is allocated. Per device:
``memory_analysis()`` (arguments = train state + batch shard, temporaries, outputs not aliased to
the donated state) and ``cost_analysis()`` FLOPs.

What the numbers are:
- memory and FLOPs of the XLA:CPU compilation of the same program, in the config's compute dtype
  (``model.dtype``). XLA:TPU / XLA:GPU fuse, schedule and rematerialise differently: treat the
  memory as an estimate (the CPU's buffer assignment is not tuned for memory). The inputs are
  what the config gives on this backend: ``data.views="auto"`` is host-rendered views on the
  CPU; ``--config.data.views=device`` plans an accelerator's default instead (raw acquisitions
  of 264 px scenes for 224 px crops, rendered inside the step).
- step time = FLOPs per device / (chip peak × MFU), ``--mfu`` 0.4 by default; the input pipeline,
  the host and the gradient all-reduce are not counted. Peaks of the matmul dtype: bfloat16 for a
  bfloat16 config; for float32, JAX's default matmul precision (TPU: one bfloat16 pass, the bf16
  peak; H100: TensorFloat-32), docs.jax.dev/en/latest/201/precision.html.
- epoch time = round(config.num_examples / global_batch) steps × step time.
- largest global batch: memory is fitted as a + b·batch per device through two compiled batch
  sizes (the config's per-device batch and half of it: at small batches the optimiser's
  parameter-sized temporaries, not the activations, set the peak, so smaller points mislead);
  the size the line gives for ``(1 − headroom) × HBM`` is compiled to check it fits, the line
  redrawn through the two compiled sizes nearest the capacity and the size recompiled until one
  fits and one more per device does not (``--verify``, at most ``--tries`` compilations a chip;
  ``--noverify``: the line's value, marked extrapolated). The global batch is a multiple of
  data×fsdp (× grad_accum_steps).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_COUNT_FLAG = "--xla_force_host_platform_device_count"


#: ``--devices`` when the command line does not give it.
DEFAULT_DEVICES = 8


def simulate_devices(argv: list[str]) -> None:
    """Sets XLA_FLAGS to ``--devices`` (default :data:`DEFAULT_DEVICES`) simulated CPU devices
    (before jax is imported), unless XLA_FLAGS already sets a count; JAX_PLATFORMS defaults to
    cpu. A count that is not a positive whole number is left to the flag's own check."""
    value = str(DEFAULT_DEVICES)
    for i, arg in enumerate(argv):
        if arg.startswith("--devices="):
            value = arg.split("=", 1)[1]
        elif arg == "--devices" and i + 1 < len(argv):
            value = argv[i + 1]
    if value.isdigit() and int(value) > 0 and _COUNT_FLAG not in os.environ.get("XLA_FLAGS", ""):
        current = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{current} {_COUNT_FLAG}={value}".strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


if __name__ == "__main__":
    simulate_devices(sys.argv)

import jax  # noqa: E402

import train_step as bench  # noqa: E402

GIB = 2 ** 30


# ----- chips ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator: memory per chip and dense matmul peaks (FLOP/s)."""

    name: str
    label: str
    hbm_bytes: float
    bf16_flops: float
    f32_flops: float       # float32 matmuls at JAX's default precision
    f32_kind: str          # what runs them

    def peak(self, dtype: str) -> float:
        return self.bf16_flops if dtype == "bfloat16" else self.f32_flops


#: cloud.google.com/tpu/docs/v4 (32 GiB HBM2, 275 bf16 TFLOP/s), cloud.google.com/tpu/docs/v5e
#: (16 GiB HBM2, 197 bf16 TFLOP/s), NVIDIA H100 SXM datasheet (80 GB HBM3, 989 bf16 / 495 TF32
#: TFLOP/s dense, i.e. without 2:4 sparsity). A TPU runs float32 matmuls as one bfloat16 pass at
#: JAX's default precision, an H100 as TensorFloat-32 (docs.jax.dev 201/precision).
CHIPS = {
    "v4": Chip("v4", "TPU v4", 32 * GIB, 275e12, 275e12, "bf16 pass"),
    "v5e": Chip("v5e", "TPU v5e", 16 * GIB, 197e12, 197e12, "bf16 pass"),
    "h100": Chip("h100", "H100 SXM", 80 * GIB, 989e12, 494.7e12, "tf32"),
}


def parse_chips(text: str) -> list[Chip]:
    """"v4", "v5e,h100" or "all" → chips, in the given (or the table's) order."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    names = list(CHIPS) if names == ["all"] else names
    if not names or any(n not in CHIPS for n in names):
        raise ValueError(f"--chip: expected a comma list of {sorted(CHIPS)} or 'all', "
                         f"found {text!r}")
    return [CHIPS[n] for n in names]


# ----- one compiled step ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StepCost:
    """Per-device memory (bytes) and FLOPs of the step compiled at ``batch`` samples per device."""

    batch: int
    arguments: int       # train state + this device's batch rows
    temporaries: int
    outputs: int         # outputs not aliased to the donated state (the metrics)
    code: int
    flops: float

    @property
    def total(self) -> int:
        return self.arguments + self.temporaries + self.outputs + self.code


#: The executables are never run: LLVM's optimisation of their code is skipped (same buffer
#: assignment, memory and FLOPs; 2-3x faster compilation of a small step).
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


class StepCompiler:
    """The trainer's step for ``config`` on ``devices`` (``config.mesh``), compiled for abstract
    batches of a given size per device; results cached by that size."""

    def __init__(self, config, devices):
        from geossl import objectives
        from geossl.parallel import mesh as mesh_lib
        from geossl.train.config_checks import check_config
        from geossl.train.loop import build_trainer
        check_config(config)
        self.config = config
        self.mesh = mesh_lib.make_mesh(config.mesh, devices)
        self.divisor = mesh_lib.batch_divisor(self.mesh)
        self.accum = int(config.grad_accum_steps)
        objective = objectives.create(config)
        tiny = copy.deepcopy(config)
        tiny.global_batch = 2
        host = bench.synthetic_batch(tiny, objective)   # the objective's own samples, for shapes
        self.sample = {k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for k, v in host.items()}
        self.trainer = build_trainer(config, objective, self.mesh, host)
        self.compiled: dict[int, StepCost] = {}
        self.compile_s = 0.0

    def batch_shapes(self, per_device: int) -> dict:
        from geossl.parallel.mesh import batch_sharding
        rows = per_device * self.divisor
        return {k: jax.ShapeDtypeStruct((rows, *s.shape), s.dtype,
                                        sharding=batch_sharding(self.mesh, len(s.shape) + 1))
                for k, s in self.sample.items()}

    def __call__(self, per_device: int) -> StepCost:
        if per_device < 1 or per_device % self.accum:
            raise ValueError(f"batch per device: expected a positive multiple of "
                             f"grad_accum_steps={self.accum}, found {per_device}")
        if per_device not in self.compiled:
            t = time.perf_counter()
            step = self.trainer.train_step.lower(self.trainer.abstract_state,
                                                 self.batch_shapes(per_device)).compile(
                compiler_options=COMPILER_OPTIONS)
            self.compile_s += time.perf_counter() - t
            m = step.memory_analysis()
            self.compiled[per_device] = StepCost(
                per_device, m.argument_size_in_bytes, m.temp_size_in_bytes,
                m.output_size_in_bytes - m.alias_size_in_bytes, m.generated_code_size_in_bytes,
                bench.step_flops(step))
        return self.compiled[per_device]


# ----- memory line and search -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Line:
    """Per-device memory ≈ intercept + slope · batch per device (bytes)."""

    intercept: float
    slope: float

    @classmethod
    def through(cls, a: StepCost, b: StepCost) -> "Line":
        slope = (b.total - a.total) / (b.batch - a.batch)
        return cls(a.total - slope * a.batch, slope)

    def at(self, batch: float) -> float:
        return self.intercept + self.slope * batch

    def largest_within(self, capacity: float, step: int) -> int:
        """The largest multiple of ``step`` whose memory stays within ``capacity`` (0: none)."""
        if self.slope <= 0:
            raise ValueError(f"memory per device does not grow with the batch ({self}): the "
                             f"largest batch cannot be extrapolated")
        return max(0, int(math.floor((capacity - self.intercept) / self.slope)) // step * step)


def _line_near(costs: dict[int, StepCost], capacity: float) -> Line:
    """The line through the two compiled sizes whose memory is nearest ``capacity``: memory is
    max(optimiser-phase peak, activations) per batch, so far-off small sizes bend the line."""
    pair = sorted(costs, key=lambda b: abs(costs[b].total - capacity))[:2]
    return Line.through(costs[min(pair)], costs[max(pair)])


#: A compiled guess grows the largest compiled size at most this many times.
GROWTH = 8


@dataclasses.dataclass(frozen=True)
class Largest:
    per_device: int       # 0: not even the smallest batch fits
    compiled: bool        # that size was compiled and fits (else: the memory line's value)
    memory: float         # bytes per device there (compiled, or by the line)


def largest_batch(measure, costs: dict[int, StepCost], capacity: float, step: int,
                  tries: int) -> Largest:
    """The largest per-device batch (a multiple of ``step``) within ``capacity``. The memory line
    through the two compiled sizes (``costs``, two or more) nearest the capacity gives a size;
    ``measure(size)`` compiles it into ``costs``; repeated until a compiled size fits and one
    more step does not (compiled, or by the line), at most ``tries`` compilations. A compiled
    guess stays between the compiled sizes that fit and do not, and below GROWTH × the largest."""
    while True:
        fits = [b for b, c in costs.items() if c.total <= capacity]
        lo = max(fits, default=0)
        hi = min((b for b in costs if b not in fits), default=None)
        if hi is not None and hi - lo <= step:
            return Largest(lo, lo > 0, costs[lo].total if lo else 0.0)
        line = _line_near(costs, capacity)
        guess = line.largest_within(capacity, step)
        if hi is not None:
            guess = min(guess, hi - step)
        if tries == 0 and guess > lo:
            return Largest(guess, False, line.at(guess))
        guess = min(guess, GROWTH * max(costs))
        if guess <= lo:
            if lo or step in costs or tries == 0:
                return Largest(lo, lo > 0, costs[lo].total if lo else 0.0)
            guess = step  # is even the smallest batch out of reach?
        tries -= 1
        costs[guess] = measure(guess)


# ----- the plan ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ChipPlan:
    chip: Chip
    usable: float          # bytes: (1 - headroom) × HBM
    fits: bool             # the config's global batch
    step_s: float
    epoch_s: float | None
    run_s: float
    largest: Largest


@dataclasses.dataclass(frozen=True)
class Plan:
    config: object
    devices: int
    mesh: dict
    divisor: int
    per_device: int        # the config's global batch per data×fsdp shard
    sample: dict           # input name → ShapeDtypeStruct of one sample
    cost: StepCost         # at the config's batch
    line: Line             # fitted through the first two compiled sizes
    fit_points: tuple
    steps_per_epoch: int | None
    mfu: float
    headroom: float
    chips: list
    compilations: int
    compile_s: float


def steps_per_epoch(config) -> int | None:
    """round(num_examples / global_batch), as ``configs.common.epoch_schedule``; None without
    ``config.num_examples``."""
    from configs import common
    if "num_examples" not in config:
        return None
    return common.steps_for(1, int(config.num_examples), int(config.global_batch))


def plan(config, devices, chips: list[Chip], *, mfu: float = 0.4, headroom: float = 0.1,
         verify: bool = True, tries: int = 3, compiler: StepCompiler | None = None) -> Plan:
    """Compiles ``config``'s train step on ``devices`` (at the config's batch and half of it, then
    per chip at the largest batch the memory line allows) and returns the plan. ``compiler``: a
    StepCompiler of the same config and devices whose compiled sizes are reused."""
    if not 0 < mfu <= 1 or not 0 <= headroom < 1:
        raise ValueError(f"expected 0 < mfu <= 1 and 0 <= headroom < 1, found mfu={mfu}, "
                         f"headroom={headroom}")
    measure = compiler or StepCompiler(config, devices)
    step = measure.accum
    per_device, rest = divmod(int(config.global_batch), measure.divisor)
    if rest or per_device % step:
        raise ValueError(f"config.global_batch: expected a multiple of data×fsdp = "
                         f"{measure.divisor} devices × grad_accum_steps {step}, found "
                         f"{config.global_batch}")
    half = max(step, per_device // 2 // step * step)
    points = (half, per_device) if half < per_device else (per_device, 2 * per_device)
    cost = measure(per_device)
    line = Line.through(measure(points[0]), measure(points[1]))
    dtype = str(config.model.get("dtype", "float32"))
    epoch_steps = steps_per_epoch(config)
    out = []
    for chip in sorted(chips, key=lambda c: c.hbm_bytes):  # smaller chips first: tighter points
        usable = (1 - headroom) * chip.hbm_bytes
        step_s = cost.flops / (chip.peak(dtype) * mfu)
        largest = largest_batch(measure, measure.compiled, usable, step, tries if verify else 0)
        out.append(ChipPlan(chip, usable, cost.total <= usable, step_s,
                            None if epoch_steps is None else epoch_steps * step_s,
                            int(config.total_steps) * step_s, largest))
    order = {c.name: i for i, c in enumerate(chips)}
    out.sort(key=lambda p: order[p.chip.name])
    return Plan(config, len(devices), dict(measure.mesh.shape), measure.divisor, per_device,
                measure.sample, cost, line, points, epoch_steps, mfu, headroom, out,
                len(measure.compiled), measure.compile_s)


# ----- text -------------------------------------------------------------------------------------
def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.2f} s"


def _flop(n: float) -> str:
    return f"{n / 1e12:.2f} TFLOP" if n >= 1e12 else f"{n / 1e9:.2f} GFLOP"


def _gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def accum_hint(p: Plan, largest: int) -> int | None:
    """The smallest grad_accum_steps whose micro-batch per device is at most ``largest``
    (dividing the global batch into whole micro-batches over the devices); None if none."""
    g = int(p.config.global_batch)
    for k in range(1, g + 1):
        if g % k == 0 and (g // k) % p.divisor == 0 and g // k // p.divisor <= largest:
            return k
    return None


def chip_line(p: Plan, c: ChipPlan) -> str:
    dtype = str(p.config.model.get("dtype", "float32"))
    kind = "bf16" if dtype == "bfloat16" else c.chip.f32_kind
    peak = f"{c.chip.peak(dtype) / 1e12:.0f} ({kind})"
    fits = f"fits ({_gib(p.cost.total)})" if c.fits else f"does not fit ({_gib(p.cost.total)})"
    b = c.largest
    if b.per_device == 0:
        largest = "none: batch 1 per device does not fit"
    else:
        mark = "" if b.compiled else ", extrapolated"
        largest = f"{b.per_device * p.divisor} ({b.per_device}/device, {_gib(b.memory)} GiB{mark})"
    return (f"{c.chip.label:9s} {c.chip.hbm_bytes / GIB:5.0f} {c.usable / GIB:7.1f}  {peak:16s} "
            f"{fits:22s} {_duration(c.step_s):>9s} {_duration(c.epoch_s):>9s} "
            f"{_duration(c.run_s):>9s}  {largest}")


def format_plan(p: Plan, name: str = "") -> str:
    cfg, cost = p.config, p.cost
    g = int(cfg.global_batch)
    dtype = str(cfg.model.get("dtype", "float32"))
    inputs = ", ".join(f"{k} {tuple(s.shape)} {s.dtype}" for k, s in p.sample.items())
    state = cost.arguments - sum(math.prod(s.shape) * s.dtype.itemsize for s in p.sample.values()) \
        * p.per_device
    lines = [
        f"plan: {name or cfg.objective.name} ({cfg.objective.name}, {cfg.model.name}, "
        f"{cfg.model.img_size} px) on {p.devices} devices, mesh "
        + " ".join(f"{k}={v}" for k, v in p.mesh.items())
        + f"; XLA:{jax.default_backend().upper()}, jax {jax.__version__}",
        f"compute dtype {dtype} (config.model.dtype); inputs per sample: {inputs}",
        f"global batch {g} = {p.per_device} per device (data×fsdp = {p.divisor}), "
        f"grad_accum_steps {cfg.grad_accum_steps}",
        f"per device at {p.per_device}: arguments {_gib(cost.arguments)} GiB (train state "
        f"{_gib(state)}, batch {_gib(cost.arguments - state)}), temporaries "
        f"{_gib(cost.temporaries)} GiB, other outputs {_gib(cost.outputs)} GiB → "
        f"{_gib(cost.total)} GiB",
        f"FLOPs per step: {_flop(cost.flops * p.devices)} on all devices ({_flop(cost.flops)} per "
        f"device, XLA cost analysis)",
        f"memory per device ≈ {_gib(p.line.intercept)} GiB + {p.line.slope / GIB:.4f} GiB × "
        f"batch per device (line through {p.fit_points[0]} and {p.fit_points[1]})",
    ]
    if p.steps_per_epoch is None:
        lines.append("steps per epoch: n/a (the config has no num_examples)")
    else:
        epochs = int(cfg.total_steps) * g / int(cfg.num_examples)
        lines.append(f"steps per epoch: {p.steps_per_epoch} = round({int(cfg.num_examples):,} "
                     f"examples / {g}); run: config.total_steps {cfg.total_steps} "
                     f"(= {epochs:.1f} epochs at this batch)")
    lines.append(f"MFU {p.mfu:.2f}, headroom {100 * p.headroom:.0f}% of HBM; {p.compilations} "
                 f"compilations, {p.compile_s:.0f} s")
    lines.append("")
    lines.append(f"{'chip':9s} {'HBM':>5s} {'usable':>7s}  {'peak TFLOP/s':16s} "
                 f"{'batch ' + str(g) + ' (GiB)':22s} {'step':>9s} {'epoch':>9s} {'run':>9s}  "
                 f"largest global batch")
    lines += [chip_line(p, c) for c in p.chips]
    for c in p.chips:
        if not c.fits:
            k = accum_hint(p, c.largest.per_device) if c.largest.per_device else None
            hint = (f"--config.global_batch={c.largest.per_device * p.divisor}"
                    if c.largest.per_device else "a larger fsdp / model mesh axis")
            if k:
                hint += f" or --config.grad_accum_steps={k} (not compiled)"
            lines.append(f"{c.chip.label}: the config's batch {g} does not fit "
                         f"{c.usable / GIB:.1f} usable GiB per chip; try {hint} or "
                         f"--config.model.dtype=bfloat16")
    lines.append("step / epoch / run: at the config's batch (as if it fitted); largest: compiled "
                 "there and fits, one more per device does not (compiled, or by the line).")
    return "\n".join(lines)


# ----- command line -----------------------------------------------------------------------------
def define_flags():
    from absl import flags
    from ml_collections import config_flags
    config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs/softcon_vit_b.py"),
                                    "Config file[:variant], as main.py takes it; --config.a.b=v "
                                    "overrides.")
    flags.DEFINE_integer("devices", DEFAULT_DEVICES, "Simulated devices (sets XLA_FLAGS before jax "
                         "starts).", lower_bound=1)
    flags.DEFINE_string("chip", "all", f"Comma list of {sorted(CHIPS)}, or 'all'.")
    flags.DEFINE_float("mfu", 0.4, "Model FLOPs utilisation assumed for the step time.")
    flags.DEFINE_float("headroom", 0.1, "Share of each chip's HBM kept free.")
    flags.DEFINE_bool("verify", True, "Compile the largest batch found to check it fits.")
    flags.DEFINE_integer("tries", 3, "At most this many compilations a chip for the largest batch.")


def parse_flags(argv):
    """absl's flag parsing; a bad flag or ``--config.*`` override is one line and exit status 2."""
    from absl import flags
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 (flags.Error, or the config file's own error)
        from geossl.errors import one_line
        print(f"benchmarks/plan.py: {one_line(e)} (--helpshort lists the flags)", file=sys.stderr)
        sys.exit(2)


def main(argv):
    from geossl.errors import run_command
    run_command(lambda: _main(argv), "benchmarks/plan.py")


def _main(argv):
    del argv
    from absl import flags
    from ml_collections import config_flags
    f = flags.FLAGS
    devices = jax.devices()
    if len(devices) < f.devices:
        raise SystemExit(f"--devices {f.devices}: only {len(devices)} {jax.default_backend()} "
                         f"devices (XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r})")
    name = os.path.relpath(config_flags.get_config_filename(f["config"]), ROOT)
    overrides = config_flags.get_override_values(f["config"])
    if overrides:
        name += f" {overrides}"
    t = time.perf_counter()
    result = plan(f.config, devices[:f.devices], parse_chips(f.chip), mfu=f.mfu,
                  headroom=f.headroom, verify=f.verify, tries=f.tries)
    print(format_plan(result, name))
    print(f"planned in {time.perf_counter() - t:.0f} s on {os.cpu_count()} CPU cores")


if __name__ == "__main__":
    from absl import app
    define_flags()
    app.run(main, flags_parser=parse_flags)
