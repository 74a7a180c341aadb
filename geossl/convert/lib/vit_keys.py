"""PyTorch key tables of the ViT in its two layouts, and the timm model that loads an export.

"original": the DINOv2 hub checkpoints (``block_chunks=0``), with ``mask_token`` and
``register_tokens``. "timm": timm's ``VisionTransformer`` (``vit_base_patch16_224``,
``vit_*_patch14_dinov2``), which has no ``mask_token`` (optional here: read when present, left out
on export); with registers, ``reg_token`` and timm's ``no_embed_class`` position table: the class
token's position row is folded into ``cls_token`` and ``pos_embed`` covers the patches only (as
timm converts DINOv2 weights). ``qkv.weight`` (3D, D) keeps its rows [q | k | v].
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np

from geossl.convert.lib.keymap import Entry

if TYPE_CHECKING:
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


def _linear(torch_name: str, *flax_path: str) -> list[Entry]:
    return [Entry(f"{torch_name}.weight", ("params", *flax_path, "kernel"), "linear"),
            Entry(f"{torch_name}.bias", ("params", *flax_path, "bias"))]


def _layer_norm(torch_name: str, *flax_path: str) -> list[Entry]:
    return [Entry(f"{torch_name}.weight", ("params", *flax_path, "scale")),
            Entry(f"{torch_name}.bias", ("params", *flax_path, "bias"))]


def detect_layout(keys) -> str:
    """"original" when the keys hold DINOv2's ``register_tokens``, else "timm" (without registers
    the two differ only by the optional ``mask_token``)."""
    return "original" if "register_tokens" in keys else "timm"


def vit_entries(model: "VisionTransformer", layout: str = "timm") -> list[Entry]:
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
        table += _linear(f"{t}.attn.qkv", f, "attn", "qkv")
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
def timm_model(model: "VisionTransformer", arch: str) -> tuple[str, dict]:
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
    """``num_register_tokens`` read from the keys (either layout); empty without registers."""
    tokens = state_dict.get("reg_token", state_dict.get("register_tokens"))
    if tokens is None or np.ndim(tokens) != 3:
        return {}
    return {"num_register_tokens": int(np.shape(tokens)[1])}
