"""PyTorch state dicts ↔ geossl variables (behind ``geossl.convert``), driven by the
per-architecture :class:`Entry` tables.

``to_torch(variables, arch)`` writes the reference layout (timm for ViTs and Swins, torchvision
for ResNets, which timm shares; ``layout="original"``: DINOv2's ViT with its ``mask_token``, the
Microsoft Swin; ``"simmim"`` the SimMIM Swin); ``from_torch(state_dict, arch)`` reads it back,
bit-exactly (the layout is detected from the keys; a ViT with registers in timm's layout comes
back with its class position folded into ``cls_token``, which computes the same).
:func:`timm_model` names the timm model (and keywords) that loads an export strictly.

On import, small adapters reconcile a checkpoint with the target model: a position table (ViT
``pos_embed``, Swin relative-position bias tables) of another grid is resampled, a first layer
with another channel count is re-initialised or repeat-and-scaled, and classifier heads are
dropped. Everything else must match, or :class:`ConversionError` lists
every missing, unexpected and wrong-shape key at once.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from geossl import models
from geossl.convert.lib.io import load_state_dict, read_metadata, save_state_dict, to_numpy
from geossl.convert.lib.keymap import TRANSFORMS, Entry

__all__ = ["ConversionError", "ConversionReport", "entries", "from_torch", "load_state_dict", "read_metadata",
           "resolve_model_kwargs", "save_state_dict", "timm_model", "to_torch"]

FIRST_LAYER_MODES = ("keep", "reinit", "repeat")
_FIRST_LAYER_KEY = {True: "patch_embed.proj.weight", False: "conv1.weight"}  # keyed by "has a patch_embed"
_POS_EMBED_KEY = "pos_embed"


@dataclasses.dataclass
class ConversionReport:
    """What a conversion matched, adapted, dropped and could not place."""

    arch: str
    matched: list[str] = dataclasses.field(default_factory=list)
    missing: list[tuple[str, tuple | None]] = dataclasses.field(default_factory=list)  # (key, expected)
    unexpected: list[tuple[str, tuple]] = dataclasses.field(default_factory=list)  # (key, found)
    mismatched: list[tuple[str, tuple, tuple]] = dataclasses.field(default_factory=list)
    adapted: list[str] = dataclasses.field(default_factory=list)
    dropped: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"{self.arch}: {len(self.matched)} matched, {len(self.missing)} missing, "
                 f"{len(self.unexpected)} unexpected, {len(self.mismatched)} wrong shape"]
        lines += [f"  missing: {k}" + ("" if s is None else f" (expected {list(s)})")
                  for k, s in self.missing]
        lines += [f"  unexpected: {k} (found {list(s)})" for k, s in self.unexpected]
        lines += [f"  wrong shape: {k}: expected {list(e)}, found {list(f)}"
                  for k, e, f in self.mismatched]
        lines += [f"  adapted: {a}" for a in self.adapted]
        if self.dropped:
            lines.append(f"  dropped {len(self.dropped)} keys: {', '.join(self.dropped[:8])}"
                         + (", ..." if len(self.dropped) > 8 else ""))
        return "\n".join(lines)


class ConversionError(ValueError):
    """A state dict does not fit the architecture; ``.report`` holds every problem."""

    def __init__(self, report: ConversionReport, hint: str = ""):
        self.report = report
        super().__init__(f"state dict does not fit {report}" + (f"\n{hint}" if hint else ""))


def entries(model, arch: str, layout: str | None = None) -> list[Entry]:
    """The key table of ``model`` (created from ``arch``); ``layout`` picks a Swin's
    (``swin_keys.LAYOUTS``) or a ViT's (``vit_keys.LAYOUTS``), default "timm"; ResNets have one."""
    if models.is_swin(arch):
        from geossl.convert.lib.swin_keys import swin_entries
        return swin_entries(model, layout or "timm")
    if models.is_vit(arch):
        from geossl.convert.lib.vit_keys import vit_entries
        return vit_entries(model, layout or "timm")
    if layout is not None:
        raise ValueError(f"layout={layout!r}: ResNets have one layout (torchvision's), found for {arch}")
    from geossl.convert.lib.resnet_keys import resnet_entries
    return resnet_entries(model)


def timm_model(arch: str, *, layout: str | None = None, **model_kw) -> tuple[str, dict] | None:
    """``(name, kwargs)``: ``timm.create_model(name, **kwargs)`` loads ``to_torch(variables, arch,
    layout=layout, **model_kw)`` with ``strict=True`` and gives the same embedding
    (``num_classes=0``); None for layouts timm does not read (Swin "original" / "simmim", ViT
    "original")."""
    model = models.create(arch, **model_kw)
    if (layout or "timm") != "timm":
        return None
    if models.is_vit(arch):
        from geossl.convert.lib.vit_keys import timm_model as vit_timm_model
        return vit_timm_model(model, arch)
    if models.is_swin(arch):
        size = model.img_size
        return arch, dict(img_size=size if isinstance(size, int) else list(size),
                          patch_size=model.patch_size, in_chans=model.in_chans, num_classes=0,
                          embed_dim=model.embed_dim, depths=list(model.depths),
                          num_heads=list(model.num_heads), window_size=model.window_size,
                          mlp_ratio=model.mlp_ratio, qkv_bias=model.qkv_bias)
    return arch, dict(in_chans=model.in_chans, num_classes=0)


# ----- export -----------------------------------------------------------------------------------
def to_torch(variables: Mapping, arch: str, *, layout: str | None = None,
             **model_kw) -> dict[str, np.ndarray]:
    """geossl variables (``{"params", ["batch_stats"]}``) → ``{torch key: numpy array}``.

    ``model_kw`` selects the structure where the name alone does not (e.g. ``depth``); channel
    count and image size need not be given (a Swin's ``img_size`` and ``window_size`` fix its
    ``attn_mask`` buffers in the original layout). ``layout``: "timm" (default; no mask_token),
    ViT "original" (DINOv2, with mask_token), Swin "original" (with buffers) or "simmim"
    (original + mask_token). Every variable must be consumed (layout-optional ones are left out).
    """
    model = models.create(arch, **model_kw)
    flat = _flatten(variables)
    report, out, used = ConversionReport(arch), {}, set()
    for e in entries(model, arch, layout):
        if e.optional:
            used.add(e.flax_path)
        elif e.flax_path is None:
            out[e.torch_key] = e.torch_only()
        elif e.flax_path in flat:
            out[e.torch_key] = TRANSFORMS[e.transform][1](np.asarray(flat[e.flax_path]))
            used.add(e.flax_path)
            report.matched.append(e.torch_key)
        else:
            report.missing.append((f"{'/'.join(e.flax_path)} (for {e.torch_key})", None))
    report.unexpected = [("/".join(p), np.shape(v)) for p, v in flat.items() if p not in used]
    if not report.ok:
        raise ConversionError(report, "hint: keys above are flax variable paths; are the variables "
                                      f"and model_kw={model_kw} those of {arch}?")
    if models.is_vit(arch) and (layout or "timm") == "timm" and model.num_register_tokens:
        from geossl.convert.lib.vit_keys import fold_class_position
        out = fold_class_position(out)
    return out


# ----- import -----------------------------------------------------------------------------------
def resolve_model_kwargs(state_dict: Mapping[str, Any], arch: str, *, in_chans: int | None = None,
                         img_size: int | None = None, **model_kw) -> dict:
    """The ``models.create`` keywords of the target model.

    ``in_chans=None`` takes the channel count of the checkpoint's first layer; for a ViT,
    ``img_size=None`` takes the size whose patch grid the checkpoint's ``pos_embed`` covers
    (518 for DINOv2 hub weights). For a Swin, ``embed_dim``, ``depths``, ``num_heads`` and
    ``window_size`` (where absent from ``model_kw``) are the checkpoint's (first bias table) and ``img_size=None`` the one its stage-0 ``attn_mask`` covers
    (original layout; the name's 224 otherwise). ResNets take any image size, so ``img_size`` is
    ignored.
    """
    vit, swin = models.is_vit(arch), models.is_swin(arch)
    kw = dict(model_kw)
    first = state_dict.get(_FIRST_LAYER_KEY[vit or swin])
    if in_chans is None and first is not None and np.ndim(first) == 4:
        in_chans = int(np.shape(first)[1])
    if in_chans is not None:
        kw["in_chans"] = int(in_chans)
    if vit:
        from geossl.convert.lib.vit_keys import checkpoint_structure
        for name, value in checkpoint_structure(state_dict).items():
            kw.setdefault(name, value)
        pos = state_dict.get(_POS_EMBED_KEY)
        if img_size is None and pos is not None and np.ndim(pos) == 3:
            grid = math.isqrt(np.shape(pos)[1] - 1)
            if grid * grid == np.shape(pos)[1] - 1:
                img_size = grid * models.create(arch, **kw).patch_size
        if img_size is not None:
            kw["img_size"] = img_size
    if swin:
        from geossl.convert.lib.swin_keys import (checkpoint_img_size, checkpoint_structure,
                                                  checkpoint_window_size)
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


def from_torch(state_dict: Mapping[str, Any], arch: str, *, strict: bool = True,
               in_chans: int | None = None, img_size: int | None = None, first_layer: str = "keep",
               rng: Any = None, drop_prefixes: tuple[str, ...] = ("head.", "fc."),
               allow_missing: tuple[str, ...] | None = None, return_report: bool = False,
               **model_kw):
    """``{torch key: tensor or array}`` → geossl variables ``{"params", ["batch_stats"]}``.

    Target model: ``models.create(arch, in_chans=..., img_size=..., **model_kw)``, the sizes
    defaulting to the checkpoint's (:func:`resolve_model_kwargs`). Adapters:
      - ``pos_embed`` of another grid is resampled to the target grid (ViT, 1 prefix token);
      - Swin: the layout (timm / original) is detected from the keys, the original's buffers
        (``relative_position_index``, ``attn_mask``) are dropped (recomputed), and bias tables of
        another window are resampled bicubically (``adapters.resample_rel_pos_bias_table``);
      - a first layer with another channel count: ``first_layer="reinit"`` takes the whole layer
        (weight and bias) from a fresh ``model.init`` seeded by ``rng`` (int, jax key or
        ``np.random.Generator``), ``"repeat"`` repeats and scales the weight
        (``adapters.adapt_input_channels``), ``"keep"`` reports it as a wrong shape;
      - keys under ``drop_prefixes`` are dropped; keys in ``allow_missing`` (default
        ``("mask_token",)`` for ViTs: timm's DINOv2 has none) may be absent and start at zero.
    Torch-only buffers (``num_batches_tracked``) are optional. Floating arrays are cast to the
    variable's dtype (float32). ``strict``: raise :class:`ConversionError` listing every problem;
    otherwise return only what matched and log the report. ``return_report``: return
    ``(variables, ConversionReport)``.
    """
    if first_layer not in FIRST_LAYER_MODES:
        raise ValueError(f"first_layer: expected one of {FIRST_LAYER_MODES}, found {first_layer!r}")
    vit, swin = models.is_vit(arch), models.is_swin(arch)
    if allow_missing is None:
        allow_missing = ("mask_token",) if vit else ()
    sd = {str(k): to_numpy(v) for k, v in state_dict.items()}
    report = ConversionReport(arch)
    layout = None
    drop_suffixes: tuple[str, ...] = ()
    if swin:
        from geossl.convert.lib.swin_keys import BUFFER_SUFFIXES, detect_layout
        layout = detect_layout(sd)
        drop_suffixes = BUFFER_SUFFIXES
    if vit:
        from geossl.convert.lib.vit_keys import detect_layout, unfold_class_position
        layout = detect_layout(sd)
        sd = unfold_class_position(sd)
    drop = {k for k in sd if k.startswith(tuple(drop_prefixes)) or k.endswith(drop_suffixes)}
    report.dropped = [k for k in sd if k in drop]
    kept = {k: v for k, v in sd.items() if k not in drop}
    # a Swin's buffers tell its input size, so they are read before being dropped
    kw = resolve_model_kwargs(sd if swin else kept, arch, in_chans=in_chans, img_size=img_size,
                              **model_kw)
    sd = kept
    model = models.create(arch, **kw)
    table = entries(model, arch, layout)
    abstract = _flatten(jax.eval_shape(model.init, jax.random.key(0), _dummy_input(model)))
    torch_shape = {e.torch_key: _torch_shape(e, abstract[e.flax_path])
                   for e in table if e.flax_path is not None}

    fresh_keys: set[str] = set()
    if vit:
        _resample_pos_embed(sd, torch_shape, model, report)
    if swin:
        _resample_rel_pos_tables(sd, torch_shape, report)
    first_key = _FIRST_LAYER_KEY[vit or swin]
    if _channels_differ(sd.get(first_key), torch_shape.get(first_key)):
        found = sd[first_key].shape[1]
        if first_layer == "repeat":
            from geossl.convert.lib.adapters import adapt_input_channels
            sd[first_key] = np.asarray(adapt_input_channels(sd[first_key], kw["in_chans"], "repeat"))
            report.adapted.append(f"{first_key}: {found} → {kw['in_chans']} channels, repeat and scale")
        elif first_layer == "reinit":
            module = next(e.flax_path[:-1] for e in table if e.torch_key == first_key)
            fresh_keys = {e.torch_key for e in table if e.flax_path and e.flax_path[:-1] == module}
            report.adapted.append(f"{', '.join(sorted(fresh_keys))}: {found} → {kw['in_chans']} "
                                  "channels, freshly initialised")

    flat: dict[tuple[str, ...], np.ndarray] = {}
    fresh_paths = [e.flax_path for e in table if e.torch_key in fresh_keys]
    if fresh_paths:
        flat.update(_fresh_init(model, fresh_paths, rng))
    consumed = set(fresh_keys)
    for e in table:
        if e.flax_path is None:  # torch-only buffer: optional, not stored
            consumed.add(e.torch_key)
            continue
        if e.torch_key in fresh_keys:
            continue
        spec = abstract[e.flax_path]
        if e.torch_key not in sd:
            if e.torch_key in allow_missing or e.optional:
                flat[e.flax_path] = np.zeros(spec.shape, spec.dtype)
                report.adapted.append(f"{e.torch_key}: absent, initialised to zeros")
            else:
                report.missing.append((e.torch_key, torch_shape[e.torch_key]))
            continue
        consumed.add(e.torch_key)
        value = sd[e.torch_key]
        if value.shape != torch_shape[e.torch_key]:
            report.mismatched.append((e.torch_key, torch_shape[e.torch_key], value.shape))
            continue
        out = TRANSFORMS[e.transform][0](value)
        if np.issubdtype(out.dtype, np.floating) or out.dtype.name == "bfloat16":
            out = out.astype(spec.dtype, copy=False)
        flat[e.flax_path] = out.copy() if np.may_share_memory(out, value) else out  # no aliasing
        report.matched.append(e.torch_key)
    report.unexpected = [(k, v.shape) for k, v in sd.items() if k not in consumed]

    if not report.ok:
        if strict:
            raise ConversionError(report, _hint(report, first_key, vit, sd, model))
        logging.warning("non-strict conversion; only matched keys returned:\n%s", report)
    variables = traverse_util.unflatten_dict(flat)
    return (variables, report) if return_report else variables


# ----- helpers ----------------------------------------------------------------------------------
def _flatten(variables: Mapping) -> dict[tuple[str, ...], Any]:
    return traverse_util.flatten_dict(_plain(variables))


def _plain(tree):
    if isinstance(tree, Mapping):
        return {str(k): _plain(v) for k, v in tree.items()}
    return tree


def _torch_shape(entry: Entry, spec) -> tuple[int, ...]:
    probe = np.broadcast_to(np.zeros((), np.int8), spec.shape)
    return TRANSFORMS[entry.transform][1](probe).shape


def _dummy_input(model) -> jax.ShapeDtypeStruct:
    size = getattr(model, "img_size", 32)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return jax.ShapeDtypeStruct((1, h, w, model.in_chans), jnp.float32)


def _channels_differ(found, expected) -> bool:
    return (found is not None and expected is not None and found.ndim == 4 and len(expected) == 4
            and found.shape[1] != expected[1]
            and found.shape[:1] + found.shape[2:] == expected[:1] + expected[2:])


def _resample_pos_embed(sd: dict, torch_shape: dict, model, report: ConversionReport) -> None:
    found, expected = sd.get(_POS_EMBED_KEY), torch_shape.get(_POS_EMBED_KEY)
    if found is None or expected is None or found.shape == expected:
        return
    square = math.isqrt(found.shape[1] - 1) ** 2 == found.shape[1] - 1
    if found.ndim != 3 or found.shape[-1] != expected[-1] or not square:
        return  # reported as a wrong shape
    size = model.img_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    grid = (h // model.patch_size, w // model.patch_size)
    if 1 + grid[0] * grid[1] != expected[1]:
        return
    from geossl.convert.lib.adapters import resample_pos_embed
    sd[_POS_EMBED_KEY] = np.asarray(resample_pos_embed(found, grid, num_prefix_tokens=1))
    g = math.isqrt(found.shape[1] - 1)
    report.adapted.append(f"{_POS_EMBED_KEY}: resampled {g}x{g} → {grid[0]}x{grid[1]}")


def _resample_rel_pos_tables(sd: dict, torch_shape: dict, report: ConversionReport) -> None:
    """Swin bias tables ((2W-1)², heads) of another window → the target's, per block."""
    from geossl.convert.lib.adapters import resample_rel_pos_bias_table
    for key, value in list(sd.items()):
        expected = torch_shape.get(key)
        if not key.endswith("relative_position_bias_table") or expected is None or value.shape == expected:
            continue
        side, new_side = math.isqrt(value.shape[0]), math.isqrt(expected[0])
        if (value.ndim != 2 or value.shape[1] != expected[1] or side * side != value.shape[0]
                or new_side * new_side != expected[0]):
            continue  # reported as a wrong shape
        sd[key] = resample_rel_pos_bias_table(value, (new_side + 1) // 2)
        report.adapted.append(f"{key}: resampled window {(side + 1) // 2} → {(new_side + 1) // 2}")


def _key(rng) -> jax.Array:
    if rng is None:
        return jax.random.key(0)
    if isinstance(rng, (int, np.integer)):
        return jax.random.key(int(rng))
    if isinstance(rng, np.random.Generator):
        return jax.random.key(int(rng.integers(2**31)))
    return rng


def _fresh_init(model, paths: list[tuple[str, ...]], rng) -> dict[tuple[str, ...], np.ndarray]:
    """The values ``model.init`` gives ``paths``; jit prunes the computation of everything else."""
    def init(key):
        flat = _flatten(model.init(key, jnp.zeros(_dummy_input(model).shape, jnp.float32)))
        return [flat[p] for p in paths]
    return dict(zip(paths, (np.asarray(v) for v in jax.jit(init)(_key(rng)))))


def _hint(report: ConversionReport, first_key: str, vit: bool, sd: Mapping, model) -> str:
    """One line per cause found: first-layer patch / kernel size, width or channel count; position
    table; ViT depth; unexpected keys."""
    hints = []
    shapes = {k: (e, f) for k, e, f in report.mismatched}
    if first_key in shapes:
        hints += _first_layer_hints(first_key, *shapes[first_key], patch=first_key.startswith("patch_embed"))
    if vit and _POS_EMBED_KEY in shapes:
        (_, rows, width), found = shapes[_POS_EMBED_KEY]
        if len(found) != 3 or found[2] != width:
            hints.append(f"pos_embed is {list(found)}, the model's (1, tokens, {width}): another "
                         "model size")
        elif math.isqrt(found[1] - 1) ** 2 != found[1] - 1:
            hints.append(f"pos_embed has {found[1]} rows, not 1 class row + a square grid: a "
                         "table with register rows, or without the class row (timm's "
                         "no_embed_class) belongs to a checkpoint with registers (reg_token)")
        else:
            hints.append(f"pos_embed ({found[1]} rows) cannot be resampled to the model's {rows} "
                         "rows: pass a square img_size that is a multiple of the patch size")
    if vit:
        depth = len({m.group(1) for m in map(re.compile(r"blocks\.(\d+)\.").match, sd) if m})
        if depth and depth != model.depth:
            hints.append(f"the checkpoint has {depth} blocks, the model {model.depth}: pass "
                         f"depth={depth}")
    if report.unexpected:
        hints.append("unexpected keys: drop them with drop_prefixes=, or strip a prefix when "
                     "loading (io.load_state_dict(strip_prefixes=...))")
    return "\n".join(f"hint: {h}" for h in hints)


def _first_layer_hints(key: str, expected: tuple, found: tuple, patch: bool) -> list[str]:
    """Causes of a first-layer (O, I, kh, kw) mismatch, each named: kernel (patch) size, output
    width, input channels."""
    if len(found) != 4 or len(expected) != 4:
        return [f"{key} is {list(found)}, expected a (out, in, kh, kw) weight like {list(expected)}"]
    hints = []
    if found[2:] != expected[2:]:
        if patch:
            hints.append(f"the checkpoint's patch size is {found[2]}x{found[3]} ({key} "
                         f"{list(found)}), the model's {expected[2]}x{expected[3]}: pass "
                         f"patch_size={found[2]} or pick the model name of that patch size")
        else:
            hints.append(f"the checkpoint's first convolution is {found[2]}x{found[3]}, the "
                         f"model's {expected[2]}x{expected[3]}: another architecture")
    if found[0] != expected[0]:
        hints.append(f"the checkpoint's first layer has {found[0]} outputs, the model's "
                     f"{expected[0]}: another model size (embed_dim / model name)")
    if found[1] != expected[1]:
        hints.append(f"the checkpoint takes {found[1]} input channels, the model {expected[1]}: "
                     'pass in_chans=, or first_layer="reinit" or "repeat" to adapt the first layer')
    return hints
