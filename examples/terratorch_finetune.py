"""Fine-tune a geossl export in TerraTorch: the export as a TerraTorch backbone, a UPerNet
segmentation task on it, and Lightning training steps on random images (put your datamodule there).

  python examples/terratorch_finetune.py --export model.safetensors --num_classes 10 [--steps 2]

Needs torch, torchgeo 0.8.1 and terratorch 1.2.11 (``make tt-env`` builds .venv-tt with them), not
geossl: everything comes from the export's header (``python -m geossl.convert export``). Prints the
task's ``model_args`` (what a TerraTorch config's ``model.init_args.model_args`` holds) and the loss
of each step. No weights are downloaded: the backbone is built with TerraTorch's own loader from the
export file.

How each family loads (TerraTorch's backbone registry, ``BACKBONE_REGISTRY.build(name, **kw)``):
- ResNet-18 / 50 exported on SSL4EO-S12's bands (13 S2 L1C in its order, or S1 VV, VH): its
  ``terratorch_ssl4eos12_*`` entry with ``ckpt_data`` = the export as a .pth (TerraTorch reads
  ckpt_data with ``torch.load``; written beside the export). TerraTorch loads it with
  ``strict=False`` and takes the first convolution's input channels by band name from the entry's
  band order, so ``model_bands`` may be any subset of the bands, in any order.
- Other ResNets, ViTs and Swins: ``timm_<the timm model the export names>`` with
  ``pretrained=True, pretrained_cfg_overlay={"file": export}`` and the export's timm keywords:
  timm reads the file itself, strictly.
- DOFA: ``terratorch_dofa_*`` with ``ckpt_data`` when the export has that entry's structure
  (DOFA-S / B / L: the entries fix patch 16, width and depth); any other (the any-sensor demo's
  patch 8, width 192, depth 4) ``terratorch_geossl_dofa``, which this example adds to TerraTorch's
  registry (a TerraTorch config needs it imported): torchgeo's ``DOFA`` class with the export's
  structure, loaded strictly, in TerraTorch's DOFA wrapper. TerraTorch's wavelength table rounds
  Sentinel-2's (0.44 µm for B1 where geossl and torchgeo use 0.4427) and gives Sentinel-1 5.405 µm
  where geossl gives DOFA v1's 3.75: set ``backbone.wavelengths`` to keep geossl's.
"""

from __future__ import annotations

import argparse
import json
import os
import re

from load_in_torchgeo import DOFA_BUILDERS, dofa_structure, fixed_dofa  # same folder

#: SSL4EO-S12's TerraTorch entries (``terratorch_`` + name) by (geossl architecture, bands).
S2_L1C = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
SSL4EO_ENTRIES = {
    ("resnet50", S2_L1C): "ssl4eos12_resnet50_sentinel2_all_softcon",
    ("resnet18", S2_L1C): "ssl4eos12_resnet18_sentinel2_all_moco",
    ("resnet50", ("VV", "VH")): "ssl4eos12_resnet50_sentinel1_all_moco",
}
#: The structure of TerraTorch's DOFA entries (``terratorch_`` + name): torchgeo's builders, which
#: fix it, but for DOFA-huge, which TerraTorch has no entry for.
DOFA_ENTRIES = {name: sizes for name, sizes in DOFA_BUILDERS.items()
                if name != "dofa_huge_patch14_224"}


def import_terratorch() -> None:
    """``import terratorch``, keeping torch's float32 matmul precision. TerraTorch 1.2.11's import
    (its Clay v1.5 module) calls ``torch.set_float32_matmul_precision("medium")`` for the whole
    process: float32 matmuls then run in bfloat16 on CPUs with AMX (oneDNN) and on GPUs, which
    moved a ViT block's features by 7e-4 of their scale on a Sapphire Rapids CPU. One line says
    when the precision was set back."""
    import sys

    import torch
    if "terratorch" in sys.modules:
        return
    precision = torch.get_float32_matmul_precision()
    import terratorch  # noqa: F401
    found = torch.get_float32_matmul_precision()
    if found != precision:
        torch.set_float32_matmul_precision(precision)
        print(f"importing terratorch set torch's float32 matmul precision to {found!r}; set back "
              f"to {precision!r}")


def read_export(path: str) -> tuple[dict, list[str]]:
    """(header metadata, tensor names) of a geossl ``.safetensors`` export."""
    from safetensors import safe_open
    if not path.endswith(".safetensors"):
        raise ValueError(f"{path}: expected a geossl .safetensors export (its header names the model)")
    with safe_open(path, framework="pt") as f:
        meta, keys = dict(f.metadata() or {}), list(f.keys())
    if meta.get("format") != "geossl":
        raise ValueError(f"{path}: not a geossl export (no 'format: geossl' in its header)")
    return meta, keys


def export_bands(meta: dict, path: str, needed: bool = False) -> tuple[str, ...]:
    """The input bands the export's header records (``geossl.bands``: the run's
    ``config.data.bands``); ``needed``: none is an error."""
    bands = tuple(json.loads(meta.get("geossl.bands", "[]")))
    if needed and not bands:
        raise ValueError(f"{path}: {meta['geossl.arch']} needs the band names (TerraTorch's "
                         "model_bands), and the export's header has no geossl.bands")
    return bands


def torch_checkpoint(export: str) -> str:
    """The export as a plain .pth state dict beside it (TerraTorch's ``ckpt_data`` reads
    ``torch.load``); rewritten when older than the export."""
    import torch
    from safetensors.torch import load_file
    path = os.path.splitext(export)[0] + ".pth"
    if not os.path.exists(path) or os.path.getmtime(path) < os.path.getmtime(export):
        torch.save(load_file(export), path)
    return path


def geossl_dofa(model_bands, ckpt_data: str | None = None, out_indices: list | None = None,
                **structure):
    """TerraTorch backbone ``terratorch_geossl_dofa``: torchgeo's ``DOFA`` of any ``structure``
    (patch_size, embed_dim, depth, ...), ``ckpt_data`` (.safetensors or .pth) loaded strictly, in
    TerraTorch's DOFA wrapper (the tokens of the ``out_indices`` blocks; the bands' wavelengths
    from TerraTorch's table)."""
    import torch
    from safetensors.torch import load_file
    import_terratorch()
    from terratorch.models.backbones.dofa_vit import DOFAEncoderWrapper, get_wavelenghts
    from torchgeo.models import DOFA

    model = DOFA(num_classes=0, **structure)
    if ckpt_data is not None:
        state_dict = load_file(ckpt_data) if ckpt_data.endswith(".safetensors") else \
            torch.load(ckpt_data, map_location="cpu", weights_only=True)
        model.load_state_dict(state_dict, strict=True)
    return DOFAEncoderWrapper(model, get_wavelenghts(model_bands), out_indices=out_indices)


def register_geossl_dofa() -> str:
    """Adds :func:`geossl_dofa` to TerraTorch's backbone registry; returns its name there."""
    import_terratorch()
    from terratorch.registry import TERRATORCH_BACKBONE_REGISTRY
    if geossl_dofa.__name__ not in TERRATORCH_BACKBONE_REGISTRY:
        TERRATORCH_BACKBONE_REGISTRY.register(geossl_dofa)
    return f"terratorch_{geossl_dofa.__name__}"


def _depth(keys: list[str]) -> int:
    return 1 + max(int(m.group(1)) for k in keys if (m := re.match(r"blocks\.(\d+)\.", k)))


def backbone_args(export: str) -> tuple[str, dict, str]:
    """(TerraTorch backbone name, its keywords, family) that load ``export`` (see the module
    docstring). Every level is returned: ResNet stages 1-4 (strides 4-32), every ViT / DOFA block,
    every Swin stage."""
    import_terratorch()
    from terratorch.models.backbones.torchgeo_resnet import get_pretrained_bands

    meta, keys = read_export(export)
    arch = meta["geossl.arch"]
    bands = export_bands(meta, export, needed=arch.startswith("dofa"))
    structure = json.loads(meta["geossl.model_kwargs"])
    if arch.startswith("dofa"):
        dofa, blocks = dofa_structure(meta), list(range(_depth(keys)))
        entry = fixed_dofa(dofa, DOFA_ENTRIES)
        if entry is None:  # the entries fix DOFA-S / B / L's structure
            kw = dict(model_bands=get_pretrained_bands(bands), ckpt_data=export, out_indices=blocks)
            return register_geossl_dofa(), dict(kw, **dofa), "dofa"
        kw = dict(model_bands=get_pretrained_bands(bands), pretrained=True,
                  ckpt_data=torch_checkpoint(export), out_indices=blocks)
        if "img_size" in dofa:
            kw["img_size"] = dofa["img_size"]
        return f"terratorch_{entry}", kw, "dofa"
    timm_kw = json.loads(meta["timm_kwargs"])
    timm_kw.pop("num_classes", None)
    if arch.startswith("resnet"):
        layers = {"layers": list(structure["stage_sizes"])} if "stage_sizes" in structure else {}
        entry = SSL4EO_ENTRIES.get((arch, bands))
        if entry:
            return f"terratorch_{entry}", dict(
                model_bands=get_pretrained_bands(bands), pretrained=True,
                ckpt_data=torch_checkpoint(export), out_indices=[1, 2, 3, 4], **layers), "resnet"
        return f"timm_{meta['timm_model']}", dict(
            pretrained=True, pretrained_cfg_overlay={"file": export}, out_indices=[1, 2, 3, 4],
            **{**layers, **timm_kw}), "resnet"
    family = "swin" if arch.startswith("swin") else "vit"
    levels = len(timm_kw["depths"]) if family == "swin" else _depth(keys)
    return f"timm_{meta['timm_model']}", dict(
        pretrained=True, pretrained_cfg_overlay={"file": export},
        out_indices=list(range(levels)), **timm_kw), family


def upernet_blocks(depth: int) -> list[int]:
    """The four ViT blocks UPerNet reads, at 1/3, 1/2, 2/3 and the end of the depth (PANGAEA /
    geossl: 3, 5, 7, 11 of 12; 7, 11, 15, 23 of 24; 0, 1, 2, 3 of 4), each after the one before
    where the depth allows."""
    blocks = []
    for k in (4, 6, 8, 12):
        block = max(round(depth * k / 12) - 1, blocks[-1] + 1 if blocks else 0)
        blocks.append(min(block, depth - 1))
    return blocks


def model_args(export: str, num_classes: int, channels: int = 256) -> dict:
    """``model_args`` of TerraTorch's ``EncoderDecoderFactory``: the export's backbone, the necks
    that turn its levels into a pyramid (ViT / DOFA blocks: four of them, ×4 / ×2 / ×1 / ×0.5;
    Swin: channels first) and a UPerNet decoder of ``channels`` (TerraTorch's default 256)."""
    name, kw, family = backbone_args(export)
    necks = []
    if family in ("vit", "dofa"):
        necks.append({"name": "SelectIndices", "indices": upernet_blocks(len(kw["out_indices"]))})
        if family == "dofa":
            necks.append({"name": "ReshapeTokensToImage", "remove_cls_token": True})
        necks.append({"name": "LearnedInterpolateToPyramidal"})
    elif family == "swin":
        necks.append({"name": "PermuteDims", "new_order": [0, 3, 1, 2]})
    return dict(backbone=name, **{f"backbone_{k}": v for k, v in kw.items()}, necks=necks,
                decoder="UperNetDecoder", decoder_channels=channels, num_classes=num_classes)


def segmentation_task(export: str, num_classes: int, lr: float = 1e-4, ignore_index: int = 255,
                      channels: int = 256):
    """TerraTorch's ``SemanticSegmentationTask`` (cross entropy, AdamW) on the export; labels
    ``ignore_index`` (geossl's unlabelled 255) are left out of the loss (TerraTorch 1.2.11's
    default None fails in torch 2.14's cross entropy)."""
    import_terratorch()
    from terratorch.tasks import SemanticSegmentationTask
    return SemanticSegmentationTask(model_args=model_args(export, num_classes, channels),
                                    model_factory="EncoderDecoderFactory", loss="ce", lr=lr,
                                    optimizer="AdamW", ignore_index=ignore_index)


def train_steps(task, images, masks, steps: int) -> list[float]:
    """``steps`` optimiser steps of ``task`` with Lightning's ``Trainer`` (on the CPU) on the
    batches of images (N,C,H,W) / masks (N,H,W), two examples each; returns the losses."""
    import lightning
    from torch.utils.data import DataLoader

    class Losses(lightning.Callback):
        def __init__(self):
            self.values = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.values.append(outputs["loss"].item())

    losses = Losses()
    examples = [{"image": image, "mask": mask} for image, mask in zip(images, masks)]
    trainer = lightning.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False,
                                callbacks=[losses], enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, train_dataloaders=DataLoader(examples, batch_size=2, shuffle=True))
    return losses.values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", required=True, help="a geossl .safetensors export")
    parser.add_argument("--num_classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=2, help="training steps on random batches of 2")
    parser.add_argument("--size", type=int, default=None,
                        help="size of the random images (default: the export's img_size, else 64)")
    args = parser.parse_args(argv)

    import torch
    meta, _ = read_export(args.export)
    structure = json.loads(meta["geossl.model_kwargs"])
    channels = len(export_bands(meta, args.export)) or structure["in_chans"]
    size = args.size or structure.get("img_size", 64)
    task = segmentation_task(args.export, args.num_classes)
    print("model_args:", json.dumps(task.hparams["model_args"], indent=1))
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2 * args.steps, channels, size, size, generator=generator)
    masks = torch.randint(0, args.num_classes, (2 * args.steps, size, size), generator=generator)
    for step, loss in enumerate(train_steps(task, images, masks, args.steps), start=1):
        print(f"step {step}: loss {loss:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
