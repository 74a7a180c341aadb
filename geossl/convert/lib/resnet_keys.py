"""Key table of torchvision ResNets (no ``fc``) ↔ :class:`geossl.models.resnet.ResNet` variables."""

from __future__ import annotations

import numpy as np

from geossl.convert.lib.keymap import Entry
from geossl.models.resnet import ResNet, stage_plan


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


def resnet_entries(model: ResNet) -> list[Entry]:
    """One :class:`Entry` per torchvision key, in torchvision's state-dict order."""
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
