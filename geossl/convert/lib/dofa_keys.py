"""PyTorch key table of DOFA in torchgeo's layout (``torchgeo.models.DOFA``, global pool).

The hypernetwork's torch names map onto geossl's modules. torch's ``self_attn.in_proj_weight``
(3E, E) becomes ``self_attn/qkv`` (rows [q | k | v] in both), ``out_proj`` becomes ``proj``, and
``transformer_encoder.layers.0`` becomes ``transformer_encoder/layers_0``. torchgeo has no
``mask_token``: it is read when present and left out on export. The released DOFA MAE weights may
lack ``fc_norm``; torchgeo's builders load them non-strictly and leave that LayerNorm at its
initial (ones, zeros). The import does the same, with a warning. ``pos_embed`` resampling,
``img_size`` detection and the shape hints are the ViT's (same ``(1, 1+G², D)`` table).
"""

from __future__ import annotations

import logging
from typing import Mapping

import numpy as np

from geossl.convert.lib import vit_keys
from geossl.convert.lib.family_adapter import FamilyAdapter
from geossl.convert.lib.keymap import Entry
from geossl.convert.lib.keymap import layer_norm as _layer_norm
from geossl.convert.lib.keymap import linear as _linear
from geossl.models.dofa import DOFA

LAYOUTS = ("torchgeo",)


def _hypernetwork_entries() -> list[Entry]:
    gen, f_gen = "patch_embed.weight_generator", ("patch_embed", "weight_generator")
    layer, f_layer = f"{gen}.transformer_encoder.layers.0", (*f_gen, "transformer_encoder", "layers_0")
    table = [Entry(f"{gen}.weight_tokens", ("params", *f_gen, "weight_tokens")),
             Entry(f"{gen}.bias_token", ("params", *f_gen, "bias_token")),
             Entry(f"{layer}.self_attn.in_proj_weight", ("params", *f_layer, "self_attn", "qkv", "kernel"),
                   "linear"),
             Entry(f"{layer}.self_attn.in_proj_bias", ("params", *f_layer, "self_attn", "qkv", "bias"))]
    table += _linear(f"{layer}.self_attn.out_proj", *f_layer, "self_attn", "proj")
    table += _linear(f"{layer}.linear1", *f_layer, "linear1")
    table += _linear(f"{layer}.linear2", *f_layer, "linear2")
    table += _layer_norm(f"{layer}.norm1", *f_layer, "norm1")
    table += _layer_norm(f"{layer}.norm2", *f_layer, "norm2")
    table += _linear(f"{gen}.fc_weight", *f_gen, "fc_weight")
    table += _linear(f"{gen}.fc_bias", *f_gen, "fc_bias")
    table += _linear("patch_embed.fclayer.w1", "patch_embed", "fclayer", "w1")
    return table + _linear("patch_embed.fclayer.w2", "patch_embed", "fclayer", "w2")


def dofa_entries(model: DOFA, layout: str = "torchgeo") -> list[Entry]:
    """One :class:`Entry` per state-dict key of ``model`` in torchgeo's layout."""
    if layout not in LAYOUTS:
        raise ValueError(f"DOFA layout: expected one of {LAYOUTS}, found {layout!r}")
    table = [Entry("cls_token", ("params", "cls_token")), Entry("pos_embed", ("params", "pos_embed")),
             Entry("mask_token", ("params", "mask_token"), optional=True)]
    table += _layer_norm("fc_norm", "fc_norm")
    table += _hypernetwork_entries()
    for i in range(model.depth):
        t, f = f"blocks.{i}", f"blocks_{i}"
        table += _layer_norm(f"{t}.norm1", f, "norm1")
        table += _linear(f"{t}.attn.qkv", f, "attn", "qkv")
        table += _linear(f"{t}.attn.proj", f, "attn", "proj")
        table += _layer_norm(f"{t}.norm2", f, "norm2")
        table += _linear(f"{t}.mlp.fc1", f, "mlp", "fc1")
        table += _linear(f"{t}.mlp.fc2", f, "mlp", "fc2")
    return table


def _detect_layout(keys) -> str:
    del keys
    return LAYOUTS[0]


def identity_fc_norm(state_dict: dict) -> dict:
    """A DOFA state dict without ``fc_norm`` (the released MAE weights) gets torchgeo's initial
    LayerNorm (weight ones, bias zeros, the width of ``cls_token``); others come back as they are."""
    cls_token = state_dict.get("cls_token")
    if ("fc_norm.weight" in state_dict or "fc_norm.bias" in state_dict or cls_token is None
            or np.ndim(cls_token) == 0):
        return state_dict  # without cls_token the key table reports it missing
    width, dtype = np.shape(cls_token)[-1:], np.asarray(cls_token).dtype
    logging.warning("DOFA checkpoint without fc_norm: its LayerNorm starts at weight 1, bias 0, as "
                    "torchgeo's builders leave it")
    return {**state_dict, "fc_norm.weight": np.ones(width, dtype), "fc_norm.bias": np.zeros(width, dtype)}


def _no_timm_model(model: DOFA, arch: str) -> tuple[str, dict]:
    raise ValueError(f"{arch}: timm has no DOFA; torchgeo.models.DOFA(img_size=..., "
                     f"patch_size={model.patch_size}, embed_dim={model.embed_dim}, "
                     f"depth={model.depth}, num_heads={model.num_heads}) loads the export")


def mismatch_hints(mismatched: dict, state_dict: Mapping, model: DOFA) -> list[str]:
    """The ViT's (``pos_embed``, depth), another patch size or width from ``fc_weight``, and a
    checkpoint without DOFA's wavelength-conditioned patch embedding."""
    hints = vit_keys.mismatch_hints(mismatched, state_dict, model)
    key = "patch_embed.weight_generator.fc_weight.weight"
    if key not in state_dict and "cls_token" not in state_dict:
        hints.append(f"no {key} nor cls_token: not a DOFA checkpoint (expected torchgeo's DOFA "
                     f"keys, found {', '.join(list(state_dict)[:4])}, ...)")
    if key in mismatched:
        rows = mismatched[key][1][0]
        hints.append(f"{key} has {rows} rows, the model's patch_size² · embed_dim = "
                     f"{model.patch_size ** 2 * model.embed_dim}: another patch size or width")
    return hints


ADAPTER = FamilyAdapter(
    layouts=LAYOUTS, entries=dofa_entries, detect=_detect_layout,
    structure=vit_keys.resolve_structure, timm_model=_no_timm_model, allow_missing=("mask_token",),
    from_reference=identity_fc_norm, resample=vit_keys.resample_position_table,
    hints=mismatch_hints)
