"""The conversion adapter of each model family, found by the family's name."""

from __future__ import annotations

from geossl import models
from geossl.convert.lib import dofa_keys, resnet_keys, swin_keys, vit_keys
from geossl.convert.lib.family_adapter import FamilyAdapter

ADAPTERS: dict[str, FamilyAdapter] = {
    "vit": vit_keys.ADAPTER,
    "swin": swin_keys.ADAPTER,
    "resnet": resnet_keys.ADAPTER,
    "dofa": dofa_keys.ADAPTER,
}


def adapter(arch: str) -> FamilyAdapter:
    """The conversion rules of ``arch``'s family (``models.family(arch).name``)."""
    name = models.family(arch).name
    if name not in ADAPTERS:
        raise ValueError(f"{arch}: no conversion for the {name} family (known: {', '.join(ADAPTERS)})")
    return ADAPTERS[name]


def layouts(arch: str) -> tuple[str, ...]:
    """The PyTorch layouts ``arch`` is read and written in, the default first."""
    return adapter(arch).layouts


def first_layer_key(arch: str) -> str:
    """The torch key of the first layer's weight: the family's ``first_layer`` path, dotted
    (torch and flax names mirror each other), e.g. ``patch_embed.proj.weight``."""
    return ".".join(models.family(arch).first_layer) + ".weight"
