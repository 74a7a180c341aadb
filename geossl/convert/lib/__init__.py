"""PyTorch state dicts ↔ geossl variables (behind ``geossl.convert``): detect → adapt → map, the
same steps for every model family, whose rules (:class:`FamilyAdapter`: layouts, key tables,
adapters) live in ``<family>_keys.py`` and are found by ``models.family(arch).name``.

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

import logging
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from geossl import models
from geossl.convert.lib.adapters import adapt_input_channels
from geossl.convert.lib.families import adapter, first_layer_key, layouts
from geossl.convert.lib.family_adapter import FamilyAdapter
from geossl.convert.lib.io import (UnreadableFileError, load_state_dict, read_metadata,
                                   save_state_dict, to_numpy)
from geossl.convert.lib.keymap import TRANSFORMS, Entry
from geossl.convert.lib.report import ConversionError, ConversionReport, first_layer_hints

__all__ = ["ConversionError", "ConversionReport", "FamilyAdapter", "UnreadableFileError", "entries",
           "from_torch", "layouts", "load_state_dict", "read_metadata", "resolve_model_kwargs",
           "save_state_dict", "timm_model", "to_torch"]

FIRST_LAYER_MODES = ("keep", "reinit", "repeat")


def entries(model, arch: str, layout: str | None = None) -> list[Entry]:
    """The key table of ``model`` (created from ``arch``) in ``layout`` (:func:`layouts`; None:
    the family's default, "timm" for ViTs and Swins, "torchvision" for ResNets)."""
    rules = adapter(arch)
    return rules.entries(model, rules.layout(layout, arch))


def timm_model(arch: str, *, layout: str | None = None, **model_kw) -> tuple[str, dict] | None:
    """``(name, kwargs)``: ``timm.create_model(name, **kwargs)`` loads ``to_torch(variables, arch,
    layout=layout, **model_kw)`` with ``strict=True`` and gives the same embedding
    (``num_classes=0``); None for layouts timm does not read (Swin "original" / "simmim", ViT
    "original")."""
    rules = adapter(arch)
    model = models.create(arch, **model_kw)
    if rules.layout(layout, arch) != rules.timm_layout:
        return None
    return rules.timm_model(model, arch)


# ----- export -----------------------------------------------------------------------------------
def to_torch(variables: Mapping, arch: str, *, layout: str | None = None,
             **model_kw) -> dict[str, np.ndarray]:
    """geossl variables (``{"params", ["batch_stats"]}``) → ``{torch key: numpy array}``.

    ``model_kw`` selects the structure where the name alone does not (e.g. ``depth``); channel
    count and image size need not be given (a Swin's ``img_size`` and ``window_size`` fix its
    ``attn_mask`` buffers in the original layout). ``layout``: "timm" (default; no mask_token),
    ViT "original" (DINOv2, with mask_token), Swin "original" (with buffers) or "simmim"
    (original + mask_token); ResNets: "torchvision" only. Every variable must be consumed
    (layout-optional ones are left out).
    """
    rules = adapter(arch)
    layout = rules.layout(layout, arch)
    model = models.create(arch, **model_kw)
    flat = _flatten(variables)
    report, out, used = ConversionReport(arch), {}, set()
    for e in rules.entries(model, layout):
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
    return rules.to_reference(out, model, layout)


# ----- import -----------------------------------------------------------------------------------
def resolve_model_kwargs(state_dict: Mapping[str, Any], arch: str, *, in_chans: int | None = None,
                         img_size: int | None = None, **model_kw) -> dict:
    """The ``models.create`` keywords of the target model.

    ``in_chans=None`` takes the channel count of the checkpoint's first layer (the family's
    ``first_layer``); the family completes the rest (``FamilyAdapter.structure``): for a ViT,
    registers, ``qkv_bias=False`` without qkv biases, and ``img_size=None`` the size whose patch
    grid the checkpoint's ``pos_embed`` covers (518 for DINOv2 hub weights, also in timm's
    register layout without the class row); for a Swin, ``embed_dim``, ``depths``, ``num_heads``,
    ``window_size`` and ``qkv_bias`` (where absent from ``model_kw``) are the checkpoint's and
    ``img_size=None`` the one its stage-0 ``attn_mask`` covers (original layout; the name's 224
    otherwise). ResNets take any image size, so ``img_size`` is ignored.
    """
    kw = dict(model_kw)
    first = state_dict.get(first_layer_key(arch))
    if in_chans is None and first is not None and np.ndim(first) == 4:
        in_chans = int(np.shape(first)[1])
    if in_chans is not None:
        kw["in_chans"] = int(in_chans)
    return adapter(arch).structure(state_dict, arch, kw, img_size)


def from_torch(state_dict: Mapping[str, Any], arch: str, *, strict: bool = True,
               in_chans: int | None = None, img_size: int | None = None, first_layer: str = "keep",
               rng: Any = None, drop_prefixes: tuple[str, ...] = ("head.", "fc."),
               allow_missing: tuple[str, ...] | None = None, return_report: bool = False,
               **model_kw):
    """``{torch key: tensor or array}`` → geossl variables ``{"params", ["batch_stats"]}``.

    Detect: the layout is read from the keys (ViT timm / DINOv2, Swin timm / original Microsoft /
    SimMIM, ResNet torchvision). Adapt, to the target model ``models.create(arch, in_chans=...,
    img_size=..., **model_kw)``, the sizes defaulting to the checkpoint's
    (:func:`resolve_model_kwargs`):
      - position tables of another grid are resampled (ViT ``pos_embed`` with 1 prefix token;
        Swin bias tables of another window, ``adapters.resample_rel_pos_bias_table``); timm's
        register-token ``pos_embed`` gets its class row back;
      - torch buffers geossl recomputes (Swin ``relative_position_index``, ``attn_mask``) are
        dropped;
      - a first layer (the family's ``first_layer``) with another channel count:
        ``first_layer="reinit"`` takes the whole layer (weight and bias) from a fresh
        ``model.init`` seeded by ``rng`` (int, jax key or ``np.random.Generator``), ``"repeat"``
        repeats and scales the weight (``adapters.adapt_input_channels``), ``"keep"`` reports it
        as a wrong shape;
      - keys under ``drop_prefixes`` are dropped; keys in ``allow_missing`` (default
        ``("mask_token",)`` for ViTs: timm's DINOv2 has none) may be absent and start at zero.
    Map: by the family's key table. Torch-only buffers (``num_batches_tracked``) are optional.
    Floating arrays are cast to the variable's dtype (float32). ``strict``: raise
    :class:`ConversionError` listing every problem; otherwise return only what matched and log
    the report. ``return_report``: return ``(variables, ConversionReport)``.
    """
    if first_layer not in FIRST_LAYER_MODES:
        raise ValueError(f"first_layer: expected one of {FIRST_LAYER_MODES}, found {first_layer!r}")
    rules = adapter(arch)
    if allow_missing is None:
        allow_missing = rules.allow_missing
    report = ConversionReport(arch)

    # detect
    sd = {str(k): to_numpy(v) for k, v in state_dict.items()}
    layout = rules.detect(sd)
    by_prefix = {k for k in sd if k.startswith(tuple(drop_prefixes))}
    by_suffix = {k for k in sd if k.endswith(rules.buffer_suffixes)}
    report.dropped = [k for k in sd if k in by_prefix or k in by_suffix]
    # the buffers tell sizes (a Swin's attn_mask its input size), so they are read before
    # dropping, and the tables as the reference wrote them (timm's register pos_embed: no class row)
    kw = resolve_model_kwargs({k: v for k, v in sd.items() if k not in by_prefix}, arch,
                              in_chans=in_chans, img_size=img_size, **model_kw)
    sd = rules.from_reference(sd)
    sd = {k: v for k, v in sd.items() if k not in by_prefix and k not in by_suffix}
    model = models.create(arch, **kw)
    table = rules.entries(model, layout)
    abstract = _flatten(jax.eval_shape(model.init, jax.random.key(0), _dummy_input(model)))
    torch_shape = {e.torch_key: _torch_shape(e, abstract[e.flax_path])
                   for e in table if e.flax_path is not None}

    # adapt
    rules.resample(sd, torch_shape, model, report.adapted)
    first_key = first_layer_key(arch)
    fresh_keys = _adapt_first_layer(sd, torch_shape, first_key, first_layer, kw, table,
                                    ("params", *models.family(arch).first_layer), report)
    flat: dict[tuple[str, ...], np.ndarray] = {}
    fresh_paths = [e.flax_path for e in table if e.torch_key in fresh_keys]
    if fresh_paths:
        flat.update(_fresh_init(model, fresh_paths, rng))

    # map
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
            raise ConversionError(report, _hint(report, first_key, rules, sd, model, arch))
        logging.warning("non-strict conversion; only matched keys returned:\n%s", report)
    variables = traverse_util.unflatten_dict(flat)
    return (variables, report) if return_report else variables


# ----- helpers ----------------------------------------------------------------------------------
def _adapt_first_layer(sd: dict, torch_shape: dict, first_key: str, mode: str, kw: dict,
                       table: list[Entry], module: tuple[str, ...],
                       report: ConversionReport) -> set[str]:
    """A first layer with another channel count: repeated and scaled in ``sd`` ("repeat"), or
    its keys returned to be freshly initialised ("reinit"); "keep" leaves it (a wrong shape)."""
    if not _channels_differ(sd.get(first_key), torch_shape.get(first_key)):
        return set()
    found = sd[first_key].shape[1]
    if mode == "repeat":
        sd[first_key] = np.asarray(adapt_input_channels(sd[first_key], kw["in_chans"], "repeat"))
        report.adapted.append(f"{first_key}: {found} → {kw['in_chans']} channels, repeat and scale")
    elif mode == "reinit":
        fresh = {e.torch_key for e in table if e.flax_path and e.flax_path[:-1] == module}
        report.adapted.append(f"{', '.join(sorted(fresh))}: {found} → {kw['in_chans']} "
                              "channels, freshly initialised")
        return fresh
    return set()


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


def _hint(report: ConversionReport, first_key: str, rules: FamilyAdapter, sd: Mapping, model,
          arch: str) -> str:
    """One line per cause found: first-layer patch / kernel size, width or channel count; the
    family's own (ViT: position table, depth); unexpected keys."""
    hints = []
    shapes = {k: (e, f) for k, e, f in report.mismatched}
    if first_key in shapes:
        hints += first_layer_hints(first_key, *shapes[first_key],
                                   patch="patch_size" in models.family(arch).kwargs)
    hints += rules.hints(shapes, sd, model)
    scale = re.compile(r"(^|\.)ls[12]\.")
    unexpected = [k for k, _ in report.unexpected]
    if any(scale.search(k) for k in unexpected):
        hints.append("the checkpoint's blocks have LayerScale (ls1, ls2): pass layerscale_init= "
                     "(any value: the weights are read)")
    if any(scale.search(k) for k, _ in report.missing):
        hints.append("the model has LayerScale (ls1, ls2), the checkpoint none: pass "
                     "layerscale_init=None")
    if [k for k in unexpected if not scale.search(k)] and not any(
            h.startswith("the checkpoint has") for h in hints):
        hints.append("unexpected keys: drop them with drop_prefixes=, or strip a prefix when "
                     "loading (io.load_state_dict(strip_prefixes=...))")
    return "\n".join(f"hint: {h}" for h in hints)
