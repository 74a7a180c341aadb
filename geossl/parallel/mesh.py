"""Device mesh ("data", "fsdp", "model") built from ``config.mesh``."""

from __future__ import annotations

import math

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "model")
#: The batch axis of every input array is split over these mesh axes.
BATCH_AXES = ("data", "fsdp")


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
    """Resolves ``{data, fsdp, model}`` sizes; one of them may be -1 (= all remaining devices)."""
    sizes = [int(mesh_cfg.get(a, 1)) for a in AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"config.mesh: at most one axis may be -1, found {dict(zip(AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if any(s == 0 or s < -1 for s in sizes) or num_devices % known:
        raise ValueError(f"config.mesh {dict(zip(AXES, sizes))} does not divide {num_devices} devices")
    sizes = [num_devices // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"config.mesh {dict(zip(AXES, sizes))} uses {math.prod(sizes)} devices, "
            f"but {num_devices} are present (set one axis to -1)")
    return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    """A Mesh over all (or the given) devices with Auto axis types."""
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(mesh_cfg, len(devices))
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading (batch) axis over ("data", "fsdp"), the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_divisor(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]
