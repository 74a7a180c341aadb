"""Backbone variables → a PyTorch state dict file with geossl's metadata (the run's export)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from geossl.convert.lib import timm_model, to_torch
from geossl.convert.lib.io import export_metadata, save_state_dict


def export_backbone(variables: Mapping, arch: str, model_kwargs: Mapping[str, Any], path: str,
                    config, layout: str | None = None) -> dict[str, np.ndarray]:
    """Writes ``variables`` ({"params", ["batch_stats"]}) of ``arch`` to ``path`` (.safetensors, or
    .pth with torch) atomically, in timm's layout unless ``layout`` says otherwise (``to_torch``),
    with the architecture, its arguments, the timm model that loads it strictly
    (:func:`timm_model`) and ``config.data``'s bands and normalisation in the header. Returns the
    state dict."""
    state_dict = to_torch(variables, arch, layout=layout, **model_kwargs)
    timm = timm_model(arch, layout=layout, **model_kwargs)
    save_state_dict(state_dict, path, export_metadata(arch, model_kwargs, config, timm))
    return state_dict
