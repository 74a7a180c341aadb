"""PyTorch interchange from the command line.

  python -m geossl.convert export --workdir DIR --output model.safetensors|model.pth [--step N]
      [--layout timm|original|simmim]
  python -m geossl.convert import [--arch NAME] --input model.pth|.safetensors --output DIR
      [--in_chans C] [--img_size S] [--window_size W] [--first_layer keep|reinit|repeat] [--seed N] [--key NAME]
      [--strip_prefixes module. backbone.] [--drop_prefixes head. fc.]

``export`` writes the backbone of a geossl workdir (training or backbone-only) in timm's layout
(``--layout original``: DINOv2's ViT with its mask_token, Microsoft's Swin), with the geossl
architecture and the timm model to create in the .safetensors header; ``import`` writes a
backbone-only workdir that training (``config.init.workdir``), evaluation and ``export`` read,
into a new or empty directory (never over a workdir). A geossl export carries its architecture
and arguments, so ``--arch`` may be left out, and its bands and normalisation, which the workdir
keeps.
``geossl/convert/__main__.py`` is the ``python -m`` entry point that delegates to ``main``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from geossl.arg_types import positive_int
from geossl.convert import FIRST_LAYER_MODES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m geossl.convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    exp = sub.add_parser("export", help="geossl workdir → .safetensors / .pth")
    exp.add_argument("--workdir", required=True, help="geossl workdir (training or backbone-only)")
    exp.add_argument("--output", required=True, help="model.safetensors or model.pth")
    exp.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    exp.add_argument("--layout", choices=("timm", "original", "simmim"), default=None,
                     help="timm (default; what timm.create_model loads strictly), original (ViT: "
                          "DINOv2 with mask_token; Swin: Microsoft, with buffers), simmim (Swin: "
                          "original + mask_token)")

    imp = sub.add_parser("import", help=".pth / .safetensors → backbone-only geossl workdir")
    imp.add_argument("--arch", default=None,
                     help="model name, e.g. vit_small_patch14, resnet50; default: the one a geossl "
                          "export records (its model arguments are used too)")
    imp.add_argument("--input", required=True, help="state dict: .pth/.pt or .safetensors")
    imp.add_argument("--output", required=True, help="directory to write (new or empty)")
    imp.add_argument("--in_chans", type=positive_int, default=None, help="default: the checkpoint's")
    imp.add_argument("--img_size", type=positive_int, default=None,
                     help="ViT and Swin; default: the checkpoint's (Swin timm layout: 224)")
    imp.add_argument("--window_size", type=positive_int, default=None,
                     help="Swin only; default: the checkpoint's (bias tables are resampled to another)")
    imp.add_argument("--model_kwargs", type=_json_object, default=None,
                     help="other architecture arguments as a JSON object, e.g. a ViT of another "
                          "size than its name: '{\"patch_size\": 8, \"num_heads\": 3}' (a "
                          "ViT's head count is not in its weights)")
    imp.add_argument("--first_layer", choices=FIRST_LAYER_MODES, default="keep",
                     help="a first layer with another channel count: keep (error), reinit, repeat")
    imp.add_argument("--seed", type=int, default=0, help="seed of a re-initialised first layer")
    imp.add_argument("--key", default=None, help="entry of the checkpoint holding the state dict")
    imp.add_argument("--strip_prefixes", nargs="*", default=["module.", "backbone."])
    imp.add_argument("--drop_prefixes", nargs="*", default=["head.", "fc."])
    imp.add_argument("--non_strict", action="store_true", help="keep what matches, log the rest")
    return parser


def _check_kwarg_types(module, extra: dict) -> None:
    """Each ``--model_kwargs`` value of the type of the architecture's own value (a JSON list for
    a tuple, an int for a float)."""
    for name, value in extra.items():
        default = getattr(module, name, None)
        if default is None:
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif isinstance(default, (tuple, list)):
            ok = isinstance(value, list)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise ValueError(f"--model_kwargs: {name} expects a value like {default!r} "
                             f"({type(default).__name__}), found {value!r}")


def _json_object(text: str) -> dict:
    """argparse type: a JSON object."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object, found {text!r} ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, found {text!r}")
    return value


def export(workdir: str, output: str, step: int | None = None, layout: str | None = None) -> dict:
    """Writes the backbone of ``workdir`` to ``output``; returns the state dict written."""
    from geossl import convert
    from geossl.models.from_config import architecture_kwargs
    from geossl.train.checkpoint import load_backbone, load_config

    arch, variables = load_backbone(workdir, step)
    config = load_config(workdir)
    state_dict = convert.export_backbone(variables, arch, architecture_kwargs(config.model),
                                         output, config, layout=layout)
    logging.info("wrote %d tensors of %s to %s", len(state_dict), arch, output)
    return state_dict


def import_(arch: str | None, input_path: str, output: str, *, in_chans: int | None = None,
            img_size: int | None = None, window_size: int | None = None,
            model_kwargs: dict | None = None, first_layer: str = "keep", seed: int = 0,
            key: str | None = None, strip_prefixes=("module.", "backbone."),
            drop_prefixes=("head.", "fc."), strict: bool = True) -> dict:
    """Converts ``input_path`` and writes a backbone-only workdir ``output``; returns the variables.

    A geossl export (.safetensors with geossl metadata) supplies the architecture and its
    arguments (depth, patch size, ...), and its input bands and normalisation
    (``config.data.bands`` / ``norm``, so that a re-export records the same); ``in_chans``,
    ``img_size``, ``window_size`` and ``model_kwargs`` (any other argument of the architecture)
    given here override the arguments. ``arch=None`` needs such a file. ``output`` must not hold
    a workdir already (an empty folder is fine)."""
    from geossl import convert, models
    from geossl.train.checkpoint import save_backbone

    arch, recorded, data = _recorded_export(arch, input_path)
    _check_new_workdir(output)
    sd = convert.load_state_dict(input_path, key=key, strip_prefixes=tuple(strip_prefixes))
    extra = dict(model_kwargs or {})
    accepted = set(models.family(arch).kwargs) - {"in_chans", "img_size", "window_size"}
    unknown = sorted(set(extra) - accepted)
    if unknown:
        raise ValueError(f"--model_kwargs: {arch} takes no {', '.join(unknown)}; its arguments: "
                         f"{', '.join(sorted(accepted))}")
    _check_kwarg_types(models.create(arch), extra)
    given = {"in_chans": in_chans, "img_size": img_size, "window_size": window_size}
    kw = {**recorded, **extra, **{k: v for k, v in given.items() if v is not None}}
    kw = convert.resolve_model_kwargs(sd, arch, in_chans=kw.pop("in_chans", None),
                                      img_size=kw.pop("img_size", None), **kw)
    variables, report = convert.from_torch(
        sd, arch, strict=strict, first_layer=first_layer, rng=seed,
        drop_prefixes=tuple(drop_prefixes), return_report=True, **kw)
    logging.info("%s", report)
    bands = data.get("bands")
    if bands is not None and len(bands) != kw.get("in_chans", len(bands)):
        logging.warning("%s records %d bands %s; the imported model takes %d channels: its bands "
                        "and norm are not kept", input_path, len(bands), bands, kw["in_chans"])
        data = {}
    ignored = models.family(arch).ignores  # a ResNet's img_size: any size fits
    save_backbone(variables, arch, output, bands=data.get("bands"), norm=data.get("norm"),
                  **{k: v for k, v in kw.items() if k not in ignored})
    return variables


def _check_new_workdir(output: str) -> None:
    """Raises, naming what it found, when ``output`` is a file or already holds a workdir."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise ValueError(f"--output {output}: an existing file, expected a directory to write")
    found = [name + "/" if os.path.isdir(os.path.join(output, name)) else name
             for name in ("config.json", "checkpoints", "backbone")
             if os.path.exists(os.path.join(output, name))]
    if not found:
        return
    if found[0] == "config.json" and (objective := _objective_name(output)):
        found[0] = f"config.json of a {objective!r} run"
    raise ValueError(f"--output {output} already holds a workdir ({', '.join(found)}): import "
                     "writes a new backbone-only workdir; pass a new or empty directory")


def _objective_name(workdir: str) -> str | None:
    """``config.objective.name`` of the workdir's config.json; None where it cannot be read."""
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    objective = config.get("objective") if isinstance(config, dict) else None
    return objective.get("name") if isinstance(objective, dict) else None


def _recorded_export(arch: str | None, input_path: str) -> tuple[str, dict, dict]:
    """``(arch, model kwargs, data)`` from ``arch`` and the geossl metadata of ``input_path`` (none
    for other files): the recorded kwargs and ``data`` (``bands``, ``norm``) apply when ``arch``
    is None or the recorded one."""
    from geossl import convert
    from geossl.convert.lib.io import geossl_data, geossl_model

    recorded, metadata = None, {}
    if input_path.endswith(".safetensors"):
        metadata = convert.read_metadata(input_path)
        recorded = geossl_model(metadata, input_path)
    if recorded is None:
        if arch is None:
            raise ValueError(f"--arch is needed: {input_path} is not a geossl export (no geossl "
                             "metadata naming its architecture)")
        return arch, {}, {}
    if arch is not None and arch != recorded[0]:
        raise ValueError(f"--arch {arch}, but {input_path} is a geossl export of {recorded[0]} "
                         f"(geossl.arch, with {recorded[1]}): leave --arch out or pass {recorded[0]}")
    logging.info("%s: geossl export of %s %s", input_path, recorded[0], recorded[1])
    return (*recorded, geossl_data(metadata, input_path))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from geossl.train.metrics import OwnInfoOnly
    geossl_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for handler in logging.getLogger().handlers:  # orbax's INFO chatter off, warnings kept
        handler.addFilter(OwnInfoOnly(geossl_dir))
    try:
        if args.command == "export":
            export(args.workdir, args.output, args.step, args.layout)
        else:
            import_(args.arch, args.input, args.output, in_chans=args.in_chans,
                    img_size=args.img_size, window_size=args.window_size,
                    model_kwargs=args.model_kwargs,
                    first_layer=args.first_layer, seed=args.seed, key=args.key,
                    strip_prefixes=args.strip_prefixes, drop_prefixes=args.drop_prefixes,
                    strict=not args.non_strict)
    except (ValueError, KeyError, OSError) as e:  # ConversionError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
