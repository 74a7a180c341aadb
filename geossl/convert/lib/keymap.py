"""Mapping tables between PyTorch state-dict keys and flax variable paths.

Each architecture module (``vit_keys.py``, ``resnet_keys.py``) enumerates, for a concrete model
configuration, one :class:`Entry` per PyTorch key. ``geossl.convert`` reads the table in both
directions; adding an architecture means adding a table, never a special case in the converter.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np


def _linear_to_flax(w: np.ndarray) -> np.ndarray:  # torch (out, in) -> flax (in, out)
    return np.ascontiguousarray(w.T)


def _conv_to_flax(w: np.ndarray) -> np.ndarray:  # torch (O, I, kh, kw) -> flax (kh, kw, I, O)
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def _conv_to_torch(w: np.ndarray) -> np.ndarray:  # flax (kh, kw, I, O) -> torch (O, I, kh, kw)
    return np.ascontiguousarray(np.transpose(w, (3, 2, 0, 1)))


def _identity(w: np.ndarray) -> np.ndarray:
    return w


#: name -> (torch -> flax, flax -> torch)
TRANSFORMS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {
    "identity": (_identity, _identity),
    "linear": (_linear_to_flax, _linear_to_flax),
    "conv": (_conv_to_flax, _conv_to_torch),
}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One PyTorch key and where it lives in the flax variables.

    torch_key:  e.g. ``"blocks.0.attn.qkv.weight"``.
    flax_path:  path into the variables dict, e.g. ``("params", "blocks_0", "attn", "qkv", "kernel")``;
                ``None`` for torch-only buffers (``num_batches_tracked``) that flax does not keep.
    transform:  a key of :data:`TRANSFORMS`.
    torch_only: for ``flax_path=None``: makes the array written on export (shape and dtype fixed).
    optional:   a variable the layout lacks (timm's Swin has no ``mask_token``): export leaves it out,
                import reads it when present and otherwise starts it at zero.
    """

    torch_key: str
    flax_path: tuple[str, ...] | None
    transform: str = "identity"
    torch_only: Callable[[], np.ndarray] | None = None
    optional: bool = False

    def __post_init__(self):
        if self.transform not in TRANSFORMS:
            raise ValueError(f"{self.torch_key}: unknown transform {self.transform!r}")
        if self.flax_path is None and self.torch_only is None:
            raise ValueError(f"{self.torch_key}: a torch-only entry needs torch_only")


def linear(torch_name: str, *flax_path: str, bias: bool = True) -> list[Entry]:
    """The entries of a torch ``Linear`` at ``torch_name`` ↔ a flax ``Dense`` at ``flax_path``."""
    table = [Entry(f"{torch_name}.weight", ("params", *flax_path, "kernel"), "linear")]
    return table + ([Entry(f"{torch_name}.bias", ("params", *flax_path, "bias"))] if bias else [])


def layer_norm(torch_name: str, *flax_path: str) -> list[Entry]:
    """The entries of a torch ``LayerNorm`` ↔ a flax ``LayerNorm`` (weight ↔ scale)."""
    return [Entry(f"{torch_name}.weight", ("params", *flax_path, "scale")),
            Entry(f"{torch_name}.bias", ("params", *flax_path, "bias"))]
