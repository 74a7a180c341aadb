"""Key table of torchvision ResNets (no ``fc``) ↔ :class:`geossl.models.resnet.ResNet` variables."""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from geossl.convert.lib.family_adapter import FamilyAdapter
from geossl.convert.lib.keymap import Entry
from geossl.models.resnet import RESNET_CONFIGS, ResNet, stage_plan

LAYOUTS = ("torchvision",)  # timm's ResNets share it


def _num_batches_tracked() -> np.ndarray:
    return np.array(0, dtype=np.int64)


def _conv(torch_prefix: str, flax_path: tuple[str, ...]) -> list[Entry]:
    return [Entry(f"{torch_prefix}.weight", ("params", *flax_path, "kernel"), "conv")]


def _bn(torch_prefix: str, flax_path: tuple[str, ...]) -> list[Entry]:
    return [
        Entry(f"{torch_prefix}.weight", ("params", *flax_path, "scale")),
        Entry(f"{torch_prefix}.bias", ("params", *flax_path, "bias")),
        Entry(f"{torch_prefix}.running_mean", ("batch_stats", *flax_path, "mean")),
        Entry(f"{torch_prefix}.running_var", ("batch_stats", *flax_path, "var")),
        Entry(f"{torch_prefix}.num_batches_tracked", None, torch_only=_num_batches_tracked),
    ]


def resnet_entries(model: ResNet, layout: str = "torchvision") -> list[Entry]:
    """One :class:`Entry` per torchvision key, in torchvision's state-dict order."""
    if layout not in LAYOUTS:
        raise ValueError(f"ResNet layout: expected one of {LAYOUTS}, found {layout!r}")
    entries = _conv("conv1", ("conv1",)) + _bn("bn1", ("bn1",))
    convs = 3 if model.block == "bottleneck" else 2
    for spec in stage_plan(model.stage_sizes, model.block, model.width):
        stage, index = spec.name.split("_")
        torch_block = f"{stage}.{index}"
        for i in range(1, convs + 1):
            entries += _conv(f"{torch_block}.conv{i}", (spec.name, f"conv{i}"))
            entries += _bn(f"{torch_block}.bn{i}", (spec.name, f"bn{i}"))
        if spec.downsample:
            entries += _conv(f"{torch_block}.downsample.0", (spec.name, "downsample_0"))
            entries += _bn(f"{torch_block}.downsample.1", (spec.name, "downsample_1"))
    return entries


def _detect_layout(keys) -> str:
    del keys
    return LAYOUTS[0]


def _resolve_structure(state_dict: Mapping, arch: str, kw: dict, img_size: int | None) -> dict:
    """Nothing to read beyond the channel count: a ResNet takes any image size."""
    del state_dict, arch, img_size
    return kw


def timm_model(model: ResNet, arch: str) -> tuple[str, dict] | None:
    """``(name, kwargs)``: timm's ResNet of ``model``'s structure, which reads the torchvision
    layout: ``arch`` itself, or the timm ResNet of the same block (resnet50: bottleneck, resnet18:
    basic) with ``layers`` the stage sizes; None for another width than 64 (timm's plain stem
    has 64 channels) or other than 4 stages (its forward runs ``layer1`` to ``layer4``)."""
    if model.width != 64 or len(model.stage_sizes) != 4:
        return None
    if RESNET_CONFIGS.get(arch) == dict(stage_sizes=tuple(model.stage_sizes), block=model.block):
        return arch, dict(in_chans=model.in_chans, num_classes=0)
    kw = dict(layers=list(model.stage_sizes), in_chans=model.in_chans, num_classes=0)
    return ("resnet50" if model.block == "bottleneck" else "resnet18"), kw


def mismatch_hints(mismatched: dict, state_dict: Mapping, model: ResNet) -> list[str]:
    """Another number of blocks per stage (``layerS.B.`` keys) or another block type."""
    del mismatched
    blocks: dict[int, set[int]] = {}
    for key in state_dict:
        m = re.match(r"layer(\d+)\.(\d+)\.", key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    found = tuple(len(blocks[s]) for s in sorted(blocks))
    hints = []
    if found and found != tuple(model.stage_sizes):
        hints.append(f"the checkpoint has {list(found)} blocks per stage, the model "
                     f"{list(model.stage_sizes)}: pass stage_sizes={found} (or the ResNet of "
                     f"that depth)")
    bottleneck = any(k.endswith(".conv3.weight") for k in state_dict)
    if blocks and bottleneck != (model.block == "bottleneck"):
        kind = "bottleneck" if bottleneck else "basic"
        hints.append(f"the checkpoint has {kind} blocks, the model {model.block}: pass "
                     f"block={kind!r} (or a ResNet of that kind: resnet50 / resnet18)")
    return hints


ADAPTER = FamilyAdapter(
    layouts=LAYOUTS, entries=resnet_entries, detect=_detect_layout, structure=_resolve_structure,
    timm_model=timm_model, timm_layout="torchvision", hints=mismatch_hints)
