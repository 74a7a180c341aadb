"""PyTorch key tables of the ViT in its two layouts, and the timm model that loads an export.

"original": the DINOv2 hub checkpoints (``block_chunks=0``), with ``mask_token`` and
``register_tokens``. "timm": timm's ``VisionTransformer`` (``vit_base_patch16_224``,
``vit_*_patch14_dinov2``), which has no ``mask_token`` (optional here: read when present, left out
on export); with registers, ``reg_token`` and timm's ``no_embed_class`` position table: the class
token's position row is folded into ``cls_token`` and ``pos_embed`` covers the patches only (as
timm converts DINOv2 weights). ``qkv.weight`` (3D, D) keeps its rows [q | k | v].
"""

from __future__ import annotations

import math
import re
from typing import Mapping

import numpy as np

from geossl import models
from geossl.convert.lib.adapters import resample_pos_embed
from geossl.convert.lib.family_adapter import FamilyAdapter
from geossl.convert.lib.keymap import Entry
from geossl.convert.lib.keymap import layer_norm as _layer_norm
from geossl.convert.lib.keymap import linear as _linear
from geossl.models.vit import VisionTransformer

LAYOUTS = ("timm", "original")

#: geossl ViT name → timm model name (without, with registers); the timm keywords written beside
#: an export set every structural field, so the name only picks timm's defaults (mean, std, ...).
TIMM_NAMES = {
    "vit_tiny_patch16": ("vit_tiny_patch16_224", "vit_tiny_patch16_224"),
    "vit_base_patch16": ("vit_base_patch16_224", "vit_base_patch16_224"),
    "vit_small_patch14": ("vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2"),
    "vit_base_patch14": ("vit_base_patch14_dinov2", "vit_base_patch14_reg4_dinov2"),
    "vit_large_patch14": ("vit_large_patch14_dinov2", "vit_large_patch14_reg4_dinov2"),
}


def detect_layout(keys) -> str:
    """"original" when the keys hold DINOv2's ``register_tokens``, else "timm" (without registers
    the two differ only by the optional ``mask_token``)."""
    return "original" if "register_tokens" in keys else "timm"


def vit_entries(model: VisionTransformer, layout: str = "timm") -> list[Entry]:
    """One :class:`Entry` per state-dict key of ``model`` in ``layout``, in checkpoint order."""
    if layout not in LAYOUTS:
        raise ValueError(f"ViT layout: expected one of {LAYOUTS}, found {layout!r}")
    timm = layout == "timm"
    table = [Entry("cls_token", ("params", "cls_token")), Entry("pos_embed", ("params", "pos_embed")),
             Entry("mask_token", ("params", "mask_token"), optional=timm)]
    if model.num_register_tokens:
        table.append(Entry("reg_token" if timm else "register_tokens", ("params", "register_tokens")))
    table += [Entry("patch_embed.proj.weight", ("params", "patch_embed", "proj", "kernel"), "conv"),
              Entry("patch_embed.proj.bias", ("params", "patch_embed", "proj", "bias"))]
    for i in range(model.depth):
        t, f = f"blocks.{i}", f"blocks_{i}"
        table += _layer_norm(f"{t}.norm1", f, "norm1")
        table += _linear(f"{t}.attn.qkv", f, "attn", "qkv", bias=model.qkv_bias)
        table += _linear(f"{t}.attn.proj", f, "attn", "proj")
        if model.layerscale_init is not None:
            table.append(Entry(f"{t}.ls1.gamma", ("params", f, "ls1", "gamma")))
        table += _layer_norm(f"{t}.norm2", f, "norm2")
        table += _linear(f"{t}.mlp.fc1", f, "mlp", "fc1")
        table += _linear(f"{t}.mlp.fc2", f, "mlp", "fc2")
        if model.layerscale_init is not None:
            table.append(Entry(f"{t}.ls2.gamma", ("params", f, "ls2", "gamma")))
    return table + _layer_norm("norm", "norm")


# ----- timm's no_embed_class position table (ViTs with registers) ------------------------------
def fold_class_position(state_dict: dict) -> dict:
    """geossl / DINOv2 → timm with registers: ``cls_token`` + ``pos_embed[:, :1]`` → ``cls_token``,
    ``pos_embed[:, 1:]`` → ``pos_embed`` (1, G², D); the model computes the same."""
    out = dict(state_dict)
    pos = np.asarray(state_dict["pos_embed"])
    out["cls_token"] = np.asarray(state_dict["cls_token"]) + pos[:, :1]
    out["pos_embed"] = np.ascontiguousarray(pos[:, 1:])
    return out


def unfold_class_position(state_dict: dict) -> dict:
    """timm with registers (``reg_token``, ``pos_embed`` (1, G², D)) → geossl: the folded
    ``cls_token`` kept, a zero class row put in front of ``pos_embed``; the model computes the
    same. Other state dicts are returned as they are."""
    pos = state_dict.get("pos_embed")
    if "reg_token" not in state_dict or pos is None or np.ndim(pos) != 3:
        return state_dict
    out = dict(state_dict)
    pos = np.asarray(pos)
    out["pos_embed"] = np.concatenate([np.zeros_like(pos[:, :1]), pos], axis=1)
    return out


# ----- the timm model of an export ----------------------------------------------------------------
def timm_model(model: VisionTransformer, arch: str) -> tuple[str, dict]:
    """``(name, kwargs)`` such that ``timm.create_model(name, **kwargs)`` loads ``model``'s
    timm-layout state dict with ``strict=True`` and computes the same embedding (num_classes 0)."""
    name = TIMM_NAMES[arch][1 if model.num_register_tokens else 0]
    size = model.img_size
    kwargs = dict(img_size=size if isinstance(size, int) else list(size),
                  patch_size=model.patch_size, in_chans=model.in_chans, num_classes=0,
                  embed_dim=model.embed_dim, depth=model.depth, num_heads=model.num_heads,
                  mlp_ratio=model.mlp_ratio, qkv_bias=model.qkv_bias,
                  init_values=model.layerscale_init)
    if model.num_register_tokens:
        kwargs.update(reg_tokens=model.num_register_tokens, no_embed_class=True)
    return name, kwargs


def checkpoint_structure(state_dict: Mapping) -> dict:
    """``num_register_tokens`` and ``qkv_bias`` read from the keys (either layout): registers
    where the keys hold them, ``qkv_bias=False`` where the first block's ``qkv`` has no bias."""
    structure = {}
    tokens = state_dict.get("reg_token", state_dict.get("register_tokens"))
    if tokens is not None and np.ndim(tokens) == 3:
        structure["num_register_tokens"] = int(np.shape(tokens)[1])
    if "blocks.0.attn.qkv.weight" in state_dict and "blocks.0.attn.qkv.bias" not in state_dict:
        structure["qkv_bias"] = False
    return structure


def position_grid(state_dict: Mapping) -> int | None:
    """The side G of the square patch grid ``pos_embed`` covers: (1, 1+G², D), or (1, G², D) in
    timm's layout with registers (``reg_token``, no class row); None for another table."""
    pos = state_dict.get("pos_embed")
    if pos is None or np.ndim(pos) != 3:
        return None
    rows = np.shape(pos)[1]
    for prefix in (1, 0) if "reg_token" in state_dict else (1,):  # 1 + m² = n² only for m = 0
        grid = math.isqrt(max(rows - prefix, 0))
        if grid > 0 and grid * grid == rows - prefix:
            return grid
    return None


# ----- import adapters ----------------------------------------------------------------------------
def resolve_structure(state_dict: Mapping, arch: str, kw: dict, img_size: int | None) -> dict:
    """``kw`` plus the checkpoint's register count and qkv bias and, for ``img_size=None``, the
    size whose patch grid its ``pos_embed`` covers (518 for DINOv2 hub weights, with or without
    the class row)."""
    accepted = models.family(arch).kwargs  # DOFA shares this reader, without registers or qkv_bias
    for name, value in checkpoint_structure(state_dict).items():
        if name in accepted:
            kw.setdefault(name, value)
    grid = position_grid(state_dict)
    if img_size is None and grid is not None:
        img_size = grid * models.create(arch, **kw).patch_size
    if img_size is not None:
        kw["img_size"] = img_size
    return kw


def resample_position_table(state_dict: dict, torch_shape: dict, model: VisionTransformer,
                            adapted: list[str]) -> None:
    """A square ``pos_embed`` (1, 1+G0², D) of another grid → the model's (1, 1+gh·gw, D)."""
    found, expected = state_dict.get("pos_embed"), torch_shape.get("pos_embed")
    if found is None or expected is None or found.shape == expected:
        return
    square = found.ndim == 3 and math.isqrt(found.shape[1] - 1) ** 2 == found.shape[1] - 1
    if not square or found.shape[-1] != expected[-1]:
        return  # reported as a wrong shape
    size = model.img_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    grid = (h // model.patch_size, w // model.patch_size)
    if 1 + grid[0] * grid[1] != expected[1]:
        return
    state_dict["pos_embed"] = np.asarray(resample_pos_embed(found, grid, num_prefix_tokens=1))
    g = math.isqrt(found.shape[1] - 1)
    adapted.append(f"pos_embed: resampled {g}x{g} → {grid[0]}x{grid[1]}")


def mismatch_hints(mismatched: dict, state_dict: Mapping, model: VisionTransformer) -> list[str]:
    """Causes of a wrong ``pos_embed`` shape and of another depth."""
    hints = []
    if "pos_embed" in mismatched:
        (_, rows, width), found = mismatched["pos_embed"]
        if len(found) != 3 or found[2] != width:
            hints.append(f"pos_embed is {list(found)}, the model's (1, tokens, {width}): another "
                         "model size")
        elif math.isqrt(found[1] - 1) ** 2 != found[1] - 1 and "reg_token" in state_dict:
            hints.append(f"pos_embed covers {found[1] - 1} patches, not a square grid: pass the "
                         "checkpoint's img_size=(H, W)")
        elif math.isqrt(found[1] - 1) ** 2 != found[1] - 1:
            hints.append(f"pos_embed has {found[1]} rows, not 1 class row + a square grid: a "
                         "non-square grid (pass the checkpoint's img_size=(H, W)), or a table "
                         "with register rows or without the class row (timm's no_embed_class), "
                         "which belongs to a checkpoint with registers (reg_token)")
        else:
            hints.append(f"pos_embed ({found[1]} rows) cannot be resampled to the model's {rows} "
                         "rows: pass a square img_size that is a multiple of the patch size")
    depth = len({m.group(1) for m in map(re.compile(r"blocks\.(\d+)\.").match, state_dict) if m})
    if depth and depth != model.depth:
        hints.append(f"the checkpoint has {depth} blocks, the model {model.depth}: pass "
                     f"depth={depth}")
    return hints


def _to_reference(state_dict: dict, model: VisionTransformer, layout: str) -> dict:
    if layout == "timm" and model.num_register_tokens:
        return fold_class_position(state_dict)
    return state_dict


ADAPTER = FamilyAdapter(
    layouts=LAYOUTS, entries=vit_entries, detect=detect_layout, structure=resolve_structure,
    timm_model=timm_model, allow_missing=("mask_token",), from_reference=unfold_class_position,
    to_reference=_to_reference, resample=resample_position_table, hints=mismatch_hints)
