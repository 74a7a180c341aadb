"""Load a geossl export into torchgeo 0.8.1's model builder of its architecture, strictly.

  python examples/load_in_torchgeo.py --export model.safetensors

Builds ``torchgeo.models.<builder>(weights=None, **keywords)`` from the export's header, loads the
file with ``load_state_dict(strict=True)`` (every key and shape must match) and prints the builder,
its keywords and the embedding of a random batch (DOFA: with geossl's band wavelengths, when geossl
is installed). Needs torch, timm and torchgeo 0.8.1; not geossl.

Builders: ResNets ``resnet18`` (basic blocks) / ``resnet50`` (bottlenecks) with the export's
``layers``, so ResNet-34 / 101 load too; ViTs the torchgeo builder of the timm model the export
names (``vit_small_patch14_dinov2``, ``vit_base_patch16_224``, ...; with registers the one
without, given ``reg_tokens``), else ``vit_small_patch16_224``:
torchgeo's ViT and ResNet builders pass every keyword to ``timm.create_model``, and the export's
keywords give the whole structure; DOFA its own name (``dofa_small_patch16_224``, ...; those
builders fix the width and depth). torchgeo 0.8.1's Swin builders (``swin_t`` / ``s`` / ``b``,
``swin_v2_*``) are torchvision's Swin (3 input channels, other keys): load a geossl Swin with timm
(the header's ``timm_model``) or TerraTorch (examples/terratorch_finetune.py).
"""

from __future__ import annotations

import argparse
import inspect
import json
import re

VIT_FALLBACK = "vit_small_patch16_224"


def read_export(path: str) -> tuple[dict, dict]:
    """(header metadata, state dict of torch tensors) of a geossl ``.safetensors`` export."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    if not path.endswith(".safetensors"):
        raise ValueError(f"{path}: expected a geossl .safetensors export (its header names the model)")
    with safe_open(path, framework="pt") as f:
        meta = dict(f.metadata() or {})
    if meta.get("format") != "geossl":
        raise ValueError(f"{path}: not a geossl export (no 'format: geossl' in its header)")
    return meta, load_file(path)


def _resnet_layers(state_dict: dict) -> list[int]:
    """Blocks per stage, from the keys ``layer{s}.{b}.``."""
    blocks: dict[int, int] = {}
    for key in state_dict:
        if m := re.match(r"layer(\d+)\.(\d+)\.", key):
            blocks[int(m.group(1))] = max(blocks.get(int(m.group(1)), 0), int(m.group(2)) + 1)
    return [blocks[s] for s in sorted(blocks)]


def builder(meta: dict, state_dict: dict) -> tuple[str, dict]:
    """(torchgeo.models builder name, its keywords) for a geossl export."""
    import torchgeo.models
    arch = meta["geossl.arch"]
    if arch.startswith("dofa"):
        structure = json.loads(meta["geossl.model_kwargs"])
        return arch, dict(num_classes=0, **{k: structure[k] for k in ("img_size",) if k in structure})
    if arch.startswith("swin"):
        raise ValueError(f"{arch}: torchgeo 0.8.1's Swin builders are torchvision's (3 channels, "
                         f"other keys); load it with timm.create_model({meta['timm_model']!r}, ...) "
                         "or TerraTorch (examples/terratorch_finetune.py)")
    kwargs = json.loads(meta["timm_kwargs"])
    if arch.startswith("resnet"):
        bottleneck = "layer1.0.conv3.weight" in state_dict
        return ("resnet50" if bottleneck else "resnet18"), dict(kwargs, layers=_resnet_layers(state_dict))
    name = meta["timm_model"]  # registers: vit_*_reg4_dinov2 → vit_*_dinov2 + reg_tokens=4
    candidates = (name, re.sub(r"_reg\d+", "", name), VIT_FALLBACK)
    return next(n for n in candidates if hasattr(torchgeo.models, n)), kwargs


def load(path: str):
    """(torchgeo model with the export's weights, builder name, keywords, header)."""
    import torchgeo.models
    meta, state_dict = read_export(path)
    name, kwargs = builder(meta, state_dict)
    build = getattr(torchgeo.models, name)
    if "weights" in inspect.signature(build).parameters:  # dofa_small_patch16_224 has none
        kwargs = dict(weights=None, **kwargs)
    model = build(**kwargs)
    model.load_state_dict(state_dict, strict=True)
    return model.eval(), name, kwargs, meta


def dofa_wavelengths(meta: dict) -> list[float] | None:
    """The central wavelengths (µm) of the export's bands, DOFA's second input, from geossl's table;
    None without geossl or without band names in the header."""
    try:
        from geossl.data.bands import wavelengths
    except ImportError:
        return None
    names = json.loads(meta.get("geossl.bands", "[]"))
    return [float(w) for w in wavelengths(names)] if names else None


def embed(model, images, wavelengths: list[float] | None = None):
    """The model's embedding of ``images`` (B,C,H,W); a DOFA's reads ``wavelengths``."""
    return model(images) if wavelengths is None else model(images, wavelengths)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", required=True, help="a geossl .safetensors export")
    args = parser.parse_args(argv)

    import torch
    model, name, kwargs, meta = load(args.export)
    print(f"torchgeo.models.{name}(**{json.dumps(kwargs)}): "
          f"{len(model.state_dict())} tensors loaded strictly")
    bands = json.loads(meta.get("geossl.bands", "[]"))
    channels = len(bands) or kwargs.get("in_chans") or json.loads(meta["geossl.model_kwargs"])["in_chans"]
    size = kwargs.get("img_size", 224)
    images = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(0))
    wavelengths = dofa_wavelengths(meta) if meta["geossl.arch"].startswith("dofa") else None
    if meta["geossl.arch"].startswith("dofa") and wavelengths is None:
        print("DOFA: call model(images, wavelengths) with the bands' central wavelengths (µm)")
        return 0
    with torch.no_grad():
        embedding = embed(model, images, wavelengths)
    print(f"embedding of a random batch: {tuple(embedding.shape)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
