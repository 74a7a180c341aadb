"""Backbones by name: ``models.create("vit_small_patch14", in_chans=13, img_size=224)``.

Every model is a ``flax.linen.Module`` with a ``num_features`` attribute and
``__call__(x, *, train=False, stochastic=False, ...) -> dict`` holding at least ``"embedding"``
(B, num_features). ``train``: BatchNorm uses batch statistics; ``stochastic``: drop path on (needs a
``"dropout"`` rng). Teachers run ``stochastic=False`` whatever their BatchNorm mode.
"""

from __future__ import annotations

import flax.linen as nn

_VIT_NAMES = ("vit_tiny_patch16", "vit_base_patch16", "vit_small_patch14", "vit_base_patch14",
              "vit_large_patch14")
_RESNET_NAMES = ("resnet18", "resnet34", "resnet50", "resnet101")
_SWIN_NAMES = ("swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224",
               "swin_base_patch4_window7_224", "swin_large_patch4_window7_224")


def names() -> list[str]:
    """All model names ``create`` accepts."""
    return list(_VIT_NAMES + _RESNET_NAMES + _SWIN_NAMES)


def is_vit(name: str) -> bool:
    """True for the ViT names (global-attention token models), False for ResNets and Swins;
    unknown names raise."""
    _check(name)
    return name in _VIT_NAMES


def is_swin(name: str) -> bool:
    """True for the Swin Transformer names (hierarchical, windowed; take ``img_size`` and
    ``window_size``); unknown names raise."""
    _check(name)
    return name in _SWIN_NAMES


def create(name: str, **kw) -> nn.Module:
    """The model ``name`` with its configuration overridden by ``kw`` (e.g. ``in_chans=13``).

    ResNets take any image size: an ``img_size`` keyword is accepted and ignored for them, so
    one ``config.model`` serves both families. Swins: ``window_size``, ``embed_dim``, ``depths``,
    ``num_heads`` as well (``geossl.models.swin``).
    """
    _check(name)
    if name in _VIT_NAMES:
        from geossl.models.vit import vit
        return vit(name, **kw)
    if name in _SWIN_NAMES:
        from geossl.models.swin import swin
        return swin(name, **kw)
    from geossl.models.resnet import resnet
    kw.pop("img_size", None)
    return resnet(name, **kw)


def _check(name: str) -> None:
    if name not in _VIT_NAMES + _RESNET_NAMES + _SWIN_NAMES:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(names())}")
