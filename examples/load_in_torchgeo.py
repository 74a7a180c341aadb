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
keywords give the whole structure; DOFA the builder whose fixed patch size, width, depth and heads
(``dofa_small_patch16_224``, ...; they override those keywords) are the export's, else the class
``torchgeo.models.DOFA`` with the export's structure (the any-sensor demo's patch 8, width 192,
depth 4). torchgeo 0.8.1's Swin builders (``swin_t`` / ``s`` / ``b``, ``swin_v2_*``) are
torchvision's Swin (3 input channels, other keys): load a geossl Swin with timm (the header's
``timm_model``) or TerraTorch (examples/terratorch_finetune.py).
"""

from __future__ import annotations

import argparse
import inspect
import json
import re

VIT_FALLBACK = "vit_small_patch16_224"
#: The structure torchgeo 0.8.1's DOFA builders fix (whatever keywords they are given).
DOFA_BUILDERS = {
    "dofa_small_patch16_224": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "dofa_base_patch16_224": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "dofa_large_patch16_224": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    "dofa_huge_patch14_224": dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
}
#: geossl's DOFA keywords that shape torchgeo's DOFA (in_chans, dtype, drop_path_rate do not).
DOFA_STRUCTURE = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")


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


def dofa_structure(meta: dict) -> dict:
    """The export's DOFA structure: its architecture's sizes with the recorded keywords over them;
    ``img_size`` an int (torchgeo's DOFA takes square images)."""
    recorded = json.loads(meta["geossl.model_kwargs"])
    structure = dict(DOFA_BUILDERS.get(meta["geossl.arch"], {}),
                     **{k: recorded[k] for k in DOFA_STRUCTURE if k in recorded})
    size = structure.get("img_size")
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"{meta['geossl.arch']}: img_size {size}: torchgeo's DOFA takes "
                             "square images only")
        structure["img_size"] = size[0]
    return structure


def fixed_dofa(structure: dict, table: dict = DOFA_BUILDERS) -> str | None:
    """The name in ``table`` (torchgeo's builders, or TerraTorch's entries) whose fixed sizes are
    ``structure``'s (they keep DOFA's mlp_ratio 4), else None."""
    shape = dict({"mlp_ratio": 4.0}, **{k: v for k, v in structure.items() if k != "img_size"})
    return next((name for name, fixed in table.items() if shape == dict(fixed, mlp_ratio=4.0)),
                None)


def dofa_builder(structure: dict) -> tuple[str, dict]:
    """(torchgeo.models builder name, its keywords) of a DOFA ``structure``: the builder that fixes
    it, else the class ``DOFA`` with every structure keyword."""
    name = fixed_dofa(structure)
    if name is None:
        return "DOFA", dict(num_classes=0, **structure)
    return name, dict(num_classes=0, **{k: structure[k] for k in ("img_size",) if k in structure})


def builder(meta: dict, state_dict: dict) -> tuple[str, dict]:
    """(torchgeo.models builder name, its keywords) for a geossl export."""
    import torchgeo.models
    arch = meta["geossl.arch"]
    if arch.startswith("dofa"):
        return dofa_builder(dofa_structure(meta))
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
