"""Backbone variables → a PyTorch state dict file with geossl's metadata (the run's export)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from geossl import models
from geossl.convert.lib import timm_model, to_torch
from geossl.convert.lib.io import export_metadata, save_state_dict


def export_backbone(variables: Mapping, arch: str, model_kwargs: Mapping[str, Any], path: str,
                    config, layout: str | None = None) -> dict[str, np.ndarray]:
    """Writes ``variables`` ({"params", ["batch_stats"]}) of ``arch`` to ``path`` (.safetensors, or
    .pth with torch) atomically, in timm's layout unless ``layout`` says otherwise (``to_torch``),
    with the architecture, its arguments, the timm model that loads it strictly
    (:func:`timm_model`) and ``config.data``'s bands and normalisation in the header; a ViT's
    also ``geossl.pos_embed_resize``, how it resized ``pos_embed`` for other grids ("timm": as
    timm's ``dynamic_img_size``; "dinov2": DINOv2's ``interpolate_pos_encoding``, which timm does
    not reproduce). Returns the state dict."""
    state_dict = to_torch(variables, arch, layout=layout, **model_kwargs)
    timm = timm_model(arch, layout=layout, **model_kwargs)
    meta = export_metadata(arch, model_kwargs, config, timm)
    resize = getattr(models.create(arch, **model_kwargs), "pos_embed_resize", None)
    if resize is not None:
        meta["geossl.pos_embed_resize"] = str(resize)
    save_state_dict(state_dict, path, meta)
    return state_dict
