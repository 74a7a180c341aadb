"""What a backbone family is and can do, declared once in its model file (``vit.FAMILY``, ...).

Callers ask the family (``models.family(name).keep_tokens``) instead of testing model names.
This module imports nothing of geossl: every model file imports it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn


@dataclasses.dataclass(frozen=True)
class Family:
    """One backbone family: its names, its builder, its keywords and what its models do.

    name: "vit" | "swin" | "resnet" | "dofa" (``geossl.convert.lib`` finds the family's conversion
        adapter under this name).
    names: the model names ``models.create`` builds with ``build(name, **kw)``.
    kwargs: the keywords ``create`` accepts for this family.
    ignores: ``config.model`` fields ``create_from_config`` drops silently for this family (a
        ResNet reads a ViT's config: one ``config.model`` serves both).
    first_layer: params path of the first layer (a conv ``{kernel, [bias]}``), e.g.
        ``("patch_embed", "proj")``; input-channel adaptation replaces it. DOFA: the dense layer
        that generates the patch-embedding kernel (``(128, p·p·D)``: no channel axis, nothing
        to adapt).
    Capabilities (what ``__call__`` takes and returns):
    keep_tokens: ``keep_idx`` (B,K) forwards only those patch tokens.
    insert_tokens: ``insert_idx`` (B,L) with ``insert_at_block`` appends mask tokens mid-network.
    mask_token: ``mask`` (B, patch grid) replaces masked patch embeddings by a learnt token
        (ViT (B,N), Swin (B,H/p,W/p)).
    patch_tokens: output ``"patch_tokens"`` (B,M,D).
    feature_maps: output ``"features"``: the stage maps (B,h,w,c).
    merging: output ``"merged"``: the patch-merging outputs of stages 1...
    register_tokens: ``num_register_tokens`` extra tokens after the class token.
    wavelengths: ``wavelengths`` (C,), one central wavelength per band in micrometres
        (``geossl.data.bands.wavelengths``), conditions the patch embedding, so any band count
        and order goes in (DOFA). :meth:`wavelength_kwargs` passes them on, and refuses them
        for every other family.
    Every model also has ``num_features`` and ``stride`` (downsampling of its final feature map).
    """

    name: str
    names: tuple[str, ...]
    build: Callable[..., nn.Module]
    kwargs: frozenset[str]
    first_layer: tuple[str, ...]
    ignores: frozenset[str] = frozenset()
    keep_tokens: bool = False
    insert_tokens: bool = False
    mask_token: bool = False
    patch_tokens: bool = False
    feature_maps: bool = False
    merging: bool = False
    register_tokens: bool = False
    wavelengths: bool = False

    def create(self, name: str, **kw) -> nn.Module:
        """``build(name, **kw)`` after checking the keywords against ``kwargs``."""
        unknown = sorted(set(kw) - self.kwargs)
        if unknown:
            raise TypeError(f"{name}: unknown keyword(s) {', '.join(unknown)}; {self.name} models "
                            f"take {', '.join(sorted(self.kwargs))}")
        return self.build(name, **kw)

    def wavelength_kwargs(self, name: str, wavelengths=None) -> dict:
        """``{"wavelengths": wavelengths}`` for ``model.apply`` when the family takes them, ``{}``
        for None. Wavelengths given to a family without the capability raise ValueError naming
        the model: its first layer has a fixed band order, so it would have to ignore them."""
        if wavelengths is None:
            return {}
        if not self.wavelengths:
            raise ValueError(f"{name}: the {self.name} family takes no wavelengths (its first "
                             "layer has one fixed band order); only wavelength-conditioned "
                             "families (dofa) take them")
        return {"wavelengths": wavelengths}


def module_fields(cls: type[nn.Module]) -> frozenset[str]:
    """The constructor fields of a flax Module class, without flax's ``parent`` and ``name``."""
    return frozenset(f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name"))
