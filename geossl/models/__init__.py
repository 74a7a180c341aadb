"""Backbones by name: ``models.create("vit_small_patch14", in_chans=13, img_size=224)``.

Every model is a ``flax.linen.Module`` with ``num_features`` (embedding width) and ``stride``
(downsampling of its final feature map) attributes and ``__call__(x, *, train=False,
stochastic=False, ...) -> dict`` holding at least ``"embedding"`` (B, num_features). ``train``:
BatchNorm uses batch statistics; ``stochastic``: drop path on (needs a ``"dropout"`` rng). Teachers
run ``stochastic=False`` whatever their BatchNorm mode.

What a model can do is declared by its family (:class:`Family`, ``FAMILY`` in each model file):
ask ``models.family(name)``, never test the name.
"""

from __future__ import annotations

import flax.linen as nn

from geossl.models import dofa, resnet, swin, vit
from geossl.models.family import Family

__all__ = ["Family", "create", "families", "family", "names"]

_FAMILIES: tuple[Family, ...] = (vit.FAMILY, resnet.FAMILY, swin.FAMILY, dofa.FAMILY)


def families() -> tuple[Family, ...]:
    """Every backbone family (ViT, ResNet, Swin, DOFA)."""
    return _FAMILIES


def names() -> list[str]:
    """All model names ``create`` accepts."""
    return [n for f in _FAMILIES for n in f.names]


def family(name: str) -> Family:
    """The family of the model ``name``; unknown names raise ValueError listing the known ones."""
    for f in _FAMILIES:
        if name in f.names:
            return f
    raise ValueError(f"unknown model {name!r}: expected one of {', '.join(names())}")


def create(name: str, **kw) -> nn.Module:
    """The model ``name`` with its configuration overridden by ``kw`` (e.g. ``in_chans=13``);
    ``family(name).kwargs`` lists the keywords (ResNets accept ``img_size`` and ignore it, so one
    ``config.model`` serves every family)."""
    return family(name).create(name, **kw)

