"""Parameter partition specs from regex rules over parameter paths (big_vision style).

``config.sharding_rules`` is a list of ``(regex, spec)`` pairs; the first rule whose regex
``re.search``-es a leaf's path ("params/blocks_0/attn/qkv/kernel", or an optimiser-state path that
ends with it) decides. ``spec`` is either a tuple of mesh-axis names / None per array dimension, or
the string ``"fsdp"``: shard the largest dimension divisible by the fsdp axis (arrays with fewer
than ``min_fsdp_size`` elements stay replicated). Leaves that match no rule are replicated.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MIN_FSDP_SIZE = 2**14


def path_str(path) -> str:
    """A jax key path as "a/b/0/c"."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _fsdp_spec(shape: Sequence[int], fsdp: int, min_size: int) -> P:
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    return P()


def spec_for(path: str, shape: Sequence[int], rules, mesh: Mesh, min_fsdp_size=MIN_FSDP_SIZE) -> P:
    for pattern, spec in rules:
        if re.search(pattern, path):
            if spec == "fsdp":
                return _fsdp_spec(shape, mesh.shape["fsdp"], min_fsdp_size)
            spec = tuple(spec) if spec is not None else ()
            if len(spec) > len(shape):
                raise ValueError(
                    f"sharding rule {pattern!r} gives {len(spec)} axes {spec} for {path} "
                    f"of shape {tuple(shape)}")
            for dim, axis in enumerate(spec):
                axes = (axis,) if isinstance(axis, str) else (axis or ())
                size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
                if shape[dim] % size:
                    raise ValueError(
                        f"sharding rule {pattern!r}: {path} dim {dim} of size {shape[dim]} is not "
                        f"divisible by mesh axes {axes} (size {size})")
            return P(*spec)
    return P()


def tree_shardings(tree: Any, rules, mesh: Mesh, min_fsdp_size=MIN_FSDP_SIZE) -> Any:
    """NamedShardings for every leaf (arrays or ShapeDtypeStructs) of ``tree``."""
    rules = [(str(r[0]), r[1]) for r in rules]

    def one(path, leaf):
        shape = getattr(leaf, "shape", ())
        return NamedSharding(mesh, spec_for(path_str(path), shape, rules, mesh, min_fsdp_size))

    return jax.tree_util.tree_map_with_path(one, tree)
