"""Shared config pieces. A config file's ``get_config(arg)`` starts from ``base()`` and parses
``arg`` ("demo", "sar", "demo,sar", ...) with ``parse_arg``."""

from __future__ import annotations

import ml_collections

S2_L1C_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
S1_BANDS = ("VV", "VH")

#: SSL4EO-S12: 250k locations (REFERENCE §2).
SSL4EO_LOCATIONS = 250_000


def parse_arg(arg: str | None, known: tuple[str, ...]) -> set[str]:
    words = {w.strip() for w in (arg or "").split(",") if w.strip()}
    unknown = words - set(known)
    if unknown:
        raise ValueError(f"unknown config variant(s) {sorted(unknown)}; known: {list(known)}")
    return words


def steps_for(epochs: float, num_examples: int, batch: int) -> int:
    return max(1, int(round(epochs * num_examples / batch)))


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.global_batch = 4096
    c.total_steps = 1000
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    c.async_checkpoints = True
    c.log_every = 50
    c.grad_accum_steps = 1
    # Mesh ("data", "fsdp", "model"); -1 = all remaining devices. The batch is split over data×fsdp.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
    # (regex over parameter paths, partition spec or "fsdp" = largest divisible dim over fsdp).
    c.sharding_rules = [(".*", "fsdp")]
    c.data = ml_collections.ConfigDict(dict(
        train="",            # glob of TFRecord shards; "" = synthetic demo data (generated once)
        num_workers=0,       # grain worker processes
        bands=S2_L1C_BANDS,  # model input bands, by name, in this order
        norm="softcon",      # per-band (x - (mu - 2 sigma)) / (4 sigma) clipped to [0, 1]
        num_classes=9,       # Dynamic World
        views="auto",        # render augmented views on the "host" (grain workers) or "device"
                             # (inside the step); auto: device on GPU/TPU, host on the CPU
        raw_size=0,          # device views: pad acquisitions to raw_size² (mixed-size datasets)
    ))
    c.init = ml_collections.ConfigDict(dict(torch_checkpoint="", workdir="", first_layer="reinit"))
    c.export = ml_collections.ConfigDict(dict(torch=True, teacher=False))
    c.probe = ml_collections.ConfigDict(dict(every=0))
    return c
