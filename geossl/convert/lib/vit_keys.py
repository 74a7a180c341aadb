"""PyTorch key table of the DINOv2-layout ViT.

Keys are those of the DINOv2 hub checkpoints (``block_chunks=0``); timm's ``vit_*_patch14_dinov2``
state dicts are the same minus ``mask_token``. ``qkv.weight`` (3D, D) keeps its rows [q | k | v].
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from geossl.convert.lib.keymap import Entry

if TYPE_CHECKING:
    from geossl.models.vit import VisionTransformer


def _linear(torch_name: str, *flax_path: str) -> list[Entry]:
    return [Entry(f"{torch_name}.weight", ("params", *flax_path, "kernel"), "linear"),
            Entry(f"{torch_name}.bias", ("params", *flax_path, "bias"))]


def _layer_norm(torch_name: str, *flax_path: str) -> list[Entry]:
    return [Entry(f"{torch_name}.weight", ("params", *flax_path, "scale")),
            Entry(f"{torch_name}.bias", ("params", *flax_path, "bias"))]


def vit_entries(model: "VisionTransformer") -> list[Entry]:
    """One :class:`Entry` per DINOv2 state-dict key of ``model``, in checkpoint order."""
    table = [Entry(name, ("params", name)) for name in ("cls_token", "pos_embed", "mask_token")]
    if model.num_register_tokens:
        table.append(Entry("register_tokens", ("params", "register_tokens")))
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
