"""Key tables of the Swin Transformer in its two PyTorch layouts.

"timm": patch merging at the start of stage i >= 1 (``layers.{i}.downsample``), no buffers, no
``mask_token``. "original" (Microsoft Swin, SimMIM, GFM): patch merging at the end of stage
i < last (``layers.{i}.downsample``, ``reduction`` before ``norm``), with the persistent buffers
``attn.relative_position_index`` (every block) and ``attn_mask`` (shifted blocks), recomputed
here on export and ignored on import; a model that pads (a stage not in whole windows, an odd
size merged) has no original-layout export, since that code pads neither. "simmim": "original"
plus SimMIM's ``mask_token`` (1,1,D) (``SwinTransformerForSimMIM``; GFM checkpoints hold it under
``encoder.``).
"""

from __future__ import annotations

import math
import re
from typing import Mapping

from geossl import models
from geossl.convert.lib.adapters import resample_rel_pos_bias_table
from geossl.convert.lib.family_adapter import FamilyAdapter
from geossl.convert.lib import keymap
from geossl.convert.lib.keymap import Entry
from geossl.models.swin import (SwinTransformer, padded, relative_position_index,
                                shifted_window_mask)

LAYOUTS = ("timm", "original", "simmim")
BUFFER_SUFFIXES = ("relative_position_index", "attn_mask")


def detect_layout(keys) -> str:
    """"original" when the keys hold a stage-0 ``downsample`` or a Swin buffer, else "timm"
    (a mask_token alone does not tell: it is read in any layout)."""
    keys = list(keys)
    if "layers.0.downsample.reduction.weight" in keys or any(k.endswith(BUFFER_SUFFIXES) for k in keys):
        return "original"
    return "timm"


def _linear(torch_name: str, flax_path: tuple[str, ...], bias: bool = True) -> list[Entry]:
    return keymap.linear(torch_name, *flax_path, bias=bias)


def _layer_norm(torch_name: str, flax_path: tuple[str, ...]) -> list[Entry]:
    return keymap.layer_norm(torch_name, *flax_path)


def _downsample(torch_name: str, flax_path: tuple[str, ...], original: bool) -> list[Entry]:
    norm = _layer_norm(f"{torch_name}.norm", (*flax_path, "norm"))
    reduction = _linear(f"{torch_name}.reduction", (*flax_path, "reduction"), bias=False)
    return reduction + norm if original else norm + reduction


def _constant(array):
    return lambda: array.copy()


def _one_axis_within_window(resolution, window_size: int) -> bool:
    """A stage no larger than the window on one axis only: timm's rule (this model's) takes that
    axis whole and shifts the other; the original code's one min(res) window, unshifted."""
    return min(resolution) <= window_size < max(resolution)


def _original_differs(stages, window_size: int) -> str | None:
    """Why the original code computes another function than this model's stages, or None."""
    for i, (resolution, window, _) in enumerate(stages):
        if _one_axis_within_window(resolution, window_size):
            return (f"the original code gives a stage no larger than its window on one axis one "
                    f"{min(resolution)}×{min(resolution)} window and no shift (timm's rule, this "
                    f"model's, works per axis), and stage {i}'s {resolution} tokens are smaller "
                    f"than the window {window_size} on one axis only")
        if resolution[0] % window[0] or resolution[1] % window[1]:
            return (f"the original code pads neither windows nor patch merging, and stage {i}'s "
                    f"{resolution} tokens are not whole {window} windows")
        if i + 1 < len(stages) and (resolution[0] % 2 or resolution[1] % 2):
            return (f"the original code pads neither windows nor patch merging, and stage {i}'s "
                    f"{resolution} tokens do not halve at the next patch merging")
    return None


def _refused(reason: str):
    def make():
        raise ValueError(f"Swin original layout: {reason}: export layout 'timm' instead")
    return make


def swin_entries(model: SwinTransformer, layout: str = "timm") -> list[Entry]:
    """One :class:`Entry` per state-dict key of ``model`` in ``layout``, in that code's order."""
    if layout not in LAYOUTS:
        raise ValueError(f"Swin layout: expected one of {LAYOUTS}, found {layout!r}")
    original = layout != "timm"
    table = [Entry("mask_token", ("params", "mask_token"), optional=layout != "simmim")]
    table += [Entry("patch_embed.proj.weight", ("params", "patch_embed", "proj", "kernel"), "conv"),
              Entry("patch_embed.proj.bias", ("params", "patch_embed", "proj", "bias"))]
    table += _layer_norm("patch_embed.norm", ("patch_embed", "norm"))
    stages = model.stage_windows()
    reason = _original_differs(stages, model.window_size)
    buffer = _constant if reason is None else (lambda _: _refused(reason))
    for i, (resolution, window, shift) in enumerate(stages):
        if i and not original:
            table += _downsample(f"layers.{i}.downsample", (f"layers_{i}", "downsample"), False)
        index = relative_position_index(*window)
        mask = (shifted_window_mask(padded(resolution, window), window, shift) if any(shift)
                else None)
        for j in range(model.depths[i]):
            t, f = f"layers.{i}.blocks.{j}", (f"layers_{i}", f"blocks_{j}")
            if original and j % 2 and mask is not None:  # the block's own buffer precedes its children
                table.append(Entry(f"{t}.attn_mask", None, torch_only=buffer(mask)))
            table += _layer_norm(f"{t}.norm1", (*f, "norm1"))
            table.append(Entry(f"{t}.attn.relative_position_bias_table",
                               ("params", *f, "attn", "relative_position_bias_table")))
            if original:
                table.append(Entry(f"{t}.attn.relative_position_index", None,
                                   torch_only=buffer(index)))
            table += _linear(f"{t}.attn.qkv", (*f, "attn", "qkv"), bias=model.qkv_bias)
            table += _linear(f"{t}.attn.proj", (*f, "attn", "proj"))
            table += _layer_norm(f"{t}.norm2", (*f, "norm2"))
            table += _linear(f"{t}.mlp.fc1", (*f, "mlp", "fc1"))
            table += _linear(f"{t}.mlp.fc2", (*f, "mlp", "fc2"))
        if original and i + 1 < len(stages):
            table += _downsample(f"layers.{i}.downsample", (f"layers_{i + 1}", "downsample"), True)
    return table + _layer_norm("norm", ("norm",))


def checkpoint_structure(state_dict: Mapping) -> dict:
    """``embed_dim``, ``depths``, ``num_heads`` and, without a qkv bias, ``qkv_bias=False`` read
    from the keys and shapes (either layout); empty when the keys hold no Swin blocks."""
    blocks: dict[int, set[int]] = {}
    for key in state_dict:
        m = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    proj = state_dict.get("patch_embed.proj.weight")
    if not blocks or proj is None or sorted(blocks) != list(range(len(blocks))):
        return {}
    tables = [state_dict.get(f"layers.{i}.blocks.0.attn.relative_position_bias_table")
              for i in range(len(blocks))]
    if any(t is None or len(t.shape) != 2 for t in tables):
        return {}
    structure = {"embed_dim": int(proj.shape[0]),
                 "depths": tuple(len(blocks[i]) for i in range(len(blocks))),
                 "num_heads": tuple(int(t.shape[1]) for t in tables)}
    qkv = "layers.0.blocks.0.attn.qkv"
    if f"{qkv}.weight" in state_dict and f"{qkv}.bias" not in state_dict:
        structure["qkv_bias"] = False
    return structure


def checkpoint_window_size(state_dict: Mapping) -> int | None:
    """The window of the first block's bias table ((2W-1)², heads), or None."""
    table = state_dict.get("layers.0.blocks.0.attn.relative_position_bias_table")
    if table is None or len(table.shape) != 2:
        return None
    side = round(table.shape[0] ** 0.5)
    return (side + 1) // 2 if side * side == table.shape[0] and side % 2 else None


def checkpoint_img_size(state_dict: Mapping, patch_size: int) -> int | None:
    """Square input size from the stage-0 shifted-window mask (nW, N, N) of an original-layout
    checkpoint: nW·N stage-0 tokens; None when absent."""
    mask = state_dict.get("layers.0.blocks.1.attn_mask")
    if mask is None or len(mask.shape) != 3:
        return None
    tokens = int(mask.shape[0]) * int(mask.shape[1])
    side = round(tokens ** 0.5)
    return side * patch_size if side * side == tokens else None


# ----- import adapters ----------------------------------------------------------------------------
def resolve_structure(state_dict: Mapping, arch: str, kw: dict, img_size: int | None) -> dict:
    """``kw`` plus the checkpoint's ``embed_dim``, ``depths``, ``num_heads`` and ``window_size``
    (where absent) and, for ``img_size=None``, the size its stage-0 ``attn_mask`` covers (original
    layout; the name's 224 otherwise)."""
    for name, value in checkpoint_structure(state_dict).items():
        kw.setdefault(name, value)
    window = checkpoint_window_size(state_dict)
    if "window_size" not in kw and window is not None:
        kw["window_size"] = window
    if img_size is None:
        img_size = checkpoint_img_size(state_dict, models.create(arch, **kw).patch_size)
    if img_size is not None:
        kw["img_size"] = img_size
    return kw


def resample_bias_tables(state_dict: dict, torch_shape: dict, model: SwinTransformer,
                         adapted: list[str]) -> None:
    """Bias tables ((2W-1)², heads) of another window → the model's, per block; a stage whose
    windows are not the original code's (smaller than the window on one axis only) is noted."""
    stages = model.stage_windows()
    for i, (resolution, window, shift) in enumerate(stages):
        if _one_axis_within_window(resolution, model.window_size):
            adapted.append(f"stage {i}: {resolution} tokens in timm's {window} windows shifted by "
                           f"{shift} (the original code: one {min(resolution)}×{min(resolution)} "
                           f"window, no shift)")
    windows = [window for _, window, _ in stages]
    for key, value in list(state_dict.items()):
        expected = torch_shape.get(key)
        if (not key.endswith("relative_position_bias_table") or expected is None
                or value.shape == expected):
            continue
        side = math.isqrt(value.shape[0])
        window = windows[int(key.split(".")[1])]
        if (value.ndim != 2 or value.shape[1] != expected[1] or side * side != value.shape[0]
                or (2 * window[0] - 1) * (2 * window[1] - 1) != expected[0]):
            continue  # reported as a wrong shape
        state_dict[key] = resample_rel_pos_bias_table(value, window)
        new = window[0] if window[0] == window[1] else f"{window[0]}×{window[1]}"
        adapted.append(f"{key}: resampled window {(side + 1) // 2} → {new}")


def timm_model(model: SwinTransformer, arch: str) -> tuple[str, dict]:
    """``(name, kwargs)``: timm's ``SwinTransformer`` of ``model``'s structure (num_classes 0)."""
    size = model.img_size
    return arch, dict(img_size=size if isinstance(size, int) else list(size),
                      patch_size=model.patch_size, in_chans=model.in_chans, num_classes=0,
                      embed_dim=model.embed_dim, depths=list(model.depths),
                      num_heads=list(model.num_heads), window_size=model.window_size,
                      mlp_ratio=model.mlp_ratio, qkv_bias=model.qkv_bias)


ADAPTER = FamilyAdapter(
    layouts=LAYOUTS, entries=swin_entries, detect=detect_layout, structure=resolve_structure,
    timm_model=timm_model, buffer_suffixes=BUFFER_SUFFIXES, resample=resample_bias_tables)
