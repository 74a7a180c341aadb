"""Frozen-backbone feature extraction: jitted, batched, batch-sharded over the local devices.

Feature modes (the linear heads of DINOv2's linear evaluation):
- ``"cls"``: ``out["embedding"]`` — final-norm CLS token (ViT) or global-average pool (ResNet).
- ``"avgpool"``: mean of the final-normed patch tokens (ViT).
- ``"cls+avgpool"``: [CLS, mean patch token] of the last block (2·D).
- ``"dinov2_4layer"``: CLS tokens of the last 4 blocks, each final-normed, concatenated (4·D).
- ``"dinov2_4layer+avgpool"``: the same plus the mean patch token of the last block (5·D).
Only ``"cls"`` applies to backbones without tokens (ResNets).

Per-layer features (``extract_layer_features``, the probes' ``--layers``), all layers from one
forward pass: for token families (ViT; ``Family.patch_tokens``) the output of block i, final-normed
(the model's ``return_layers``), read by ``mode`` in ``LAYER_MODES`` (its CLS token, its mean patch
token, or both); the last block's equal the model's own ``cls`` / ``avgpool`` features. For
feature-map families (ResNet, Swin; ``Family.feature_maps``) stage i's map average-pooled over
space, the last stage being the model's ``embedding`` (a Swin's final-normed map pooled), with
``mode="cls"``. ``--mode cls --layers=-4,-3,-2,-1`` concatenated is ``dinov2_4layer``.

Images are resized to the model's input size as the lab's eval transform does ("resize 256 +
centre crop 224"): shorter side to ``round(img_size / crop_ratio)``, then the central
``img_size × img_size``; images already ``img_size`` square pass untouched.

Wavelengths: a wavelength-conditioned encoder (DOFA, ``Family.wavelengths``) reads any bands, so
every function here takes ``wavelengths`` (C,) µm, one per band of the images
(:func:`input_wavelengths` of their band names), and hands them to the model call through
``Family.wavelength_kwargs`` (:func:`wavelength_kwargs`): None for the other families, which
refuse them (their first layer has one fixed band order). In the jitted forward they are an
array argument, so one program serves every sensor with the same band count. On CPUs the forward
compiles with the train step's XLA options (``cpu_options.jit_with_step_options``).
"""

from __future__ import annotations

import functools
from typing import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from geossl.parallel import cpu_options

MODES = ("cls", "avgpool", "cls+avgpool", "dinov2_4layer", "dinov2_4layer+avgpool")
#: Modes of per-layer features (token families; feature-map families take "cls").
LAYER_MODES = ("cls", "avgpool", "cls+avgpool")
#: 224 / 256: the eval transform resize-then-crop ratio.
CROP_RATIO = 0.875


def resize_center_crop(images: jax.Array, img_size: int | None, crop_ratio: float = CROP_RATIO):
    """(B, H, W, C) → (B, img_size, img_size, C); bilinear (antialiased) resize + centre crop."""
    if img_size is None:
        return images
    b, h, w, c = images.shape
    if (h, w) == (img_size, img_size):
        return images
    short = max(img_size, int(round(img_size / crop_ratio)))
    scale = short / min(h, w)
    nh, nw = max(img_size, int(round(h * scale))), max(img_size, int(round(w * scale)))
    images = jax.image.resize(images, (b, nh, nw, c), method="bilinear", antialias=True)
    top, left = (nh - img_size) // 2, (nw - img_size) // 2
    return images[:, top:top + img_size, left:left + img_size, :]


@functools.lru_cache(maxsize=None)
def _family_of_class(cls):
    from geossl import models
    for family in models.families():
        if issubclass(cls, type(family.build(family.names[0]))):
            return family
    return None


def model_family(model):
    """The ``geossl.models.Family`` whose models are of ``model``'s class; None for a module of
    no geossl family (a test stub)."""
    return _family_of_class(type(model))


def wavelength_kwargs(model, wavelengths=None) -> dict:
    """The keywords that give ``wavelengths`` (C,) to ``model.apply``: ``{}`` for None;
    ``Family.wavelength_kwargs`` of the model's family (ValueError for a fixed-band family:
    ViT, Swin, ResNet); passed on as they are to a module of no geossl family."""
    if wavelengths is None:
        return {}
    family = model_family(model)
    if family is None:
        return {"wavelengths": wavelengths}
    return family.wavelength_kwargs(type(model).__name__, wavelengths)


def input_wavelengths(model, bands, table=None) -> np.ndarray | None:
    """(C,) float32 central wavelengths (µm, ``geossl.data.bands.wavelengths``; ``table``: the
    run's ``config.data.wavelengths`` over its table) of the input ``bands`` for a
    wavelength-conditioned ``model`` (DOFA); None for any other model."""
    family = model_family(model)
    if family is None or not family.wavelengths:
        return None
    if not bands:
        raise ValueError(f"{type(model).__name__}: a wavelength-conditioned encoder needs the band "
                         "names of its input (for their wavelengths); found none")
    from geossl.data import bands as bands_lib
    return bands_lib.wavelengths(list(bands), bands_lib.check_wavelength_table(table))


def _num_blocks(model) -> int:
    depth = getattr(model, "depth", None)
    if depth is None:
        raise ValueError(f"feature mode needs the block count of the model, but "
                         f"{type(model).__name__} has no 'depth' attribute")
    return int(depth)


def feature_dim(model, mode: str) -> int:
    """Width of the features ``mode`` gives for ``model`` (``model.num_features`` = D)."""
    d = int(model.num_features)
    return {"cls": d, "avgpool": d, "cls+avgpool": 2 * d, "dinov2_4layer": 4 * d,
            "dinov2_4layer+avgpool": 5 * d}[mode]


def apply_features(model, variables, images, mode: str = "cls", *, wavelengths=None):
    """Features (B, F) float32 of a batch (B, H, W, C) at the model's input size (``wavelengths``
    (C,): see the module docstring); traceable."""
    if mode not in MODES:
        raise ValueError(f"feature mode: expected one of {MODES}, found {mode!r}")
    waves = wavelength_kwargs(model, wavelengths)
    if mode == "cls":
        return model.apply(variables, images, train=False, **waves)["embedding"].astype(jnp.float32)
    layers = ()
    if mode.startswith("dinov2_4layer"):
        depth = _num_blocks(model)
        if depth < 4:
            raise ValueError(f"mode {mode!r} needs at least 4 blocks; the model has {depth}")
        layers = tuple(range(depth - 4, depth))
    try:
        out = model.apply(variables, images, train=False, **waves,
                          **({"return_layers": layers} if layers else {}))
    except TypeError as e:  # a backbone without intermediate-layer outputs
        raise ValueError(f"feature mode {mode!r} needs a ViT; {type(model).__name__}: {e}") from e
    if "patch_tokens" not in out or (layers and len(out.get("intermediates", ())) != len(layers)):
        raise ValueError(f"feature mode {mode!r} needs a ViT (patch tokens); "
                         f"{type(model).__name__} only gives {sorted(out)}: use mode='cls'")
    parts = []
    if mode == "cls+avgpool":
        parts.append(out["embedding"])
    if layers:
        parts.extend(tokens[:, 0] for tokens in out["intermediates"])
    if mode.endswith("avgpool"):
        parts.append(out["patch_tokens"].mean(axis=1))
    return jnp.concatenate(parts, axis=-1).astype(jnp.float32)


def layer_source(family) -> str:
    """"blocks" for a token family (``family.patch_tokens``), "stages" for a feature-map family
    (``family.feature_maps``); any other family has no per-layer features."""
    if family.patch_tokens:
        return "blocks"
    if family.feature_maps:
        return "stages"
    raise ValueError(f"per-layer features: the {family.name} family has neither patch tokens nor "
                     "stage feature maps")


def layer_count(model, family, variables, img_size: int | None = None) -> int:
    """Blocks (token families: ``model.depth``) or stages (feature-map families: the length of
    the model's ``"features"``, found by tracing one ``img_size`` image, default the model's)."""
    if layer_source(family) == "blocks":
        return _num_blocks(model)
    size = img_size or getattr(model, "img_size", None) or 64
    size = (size, size) if isinstance(size, int) else tuple(size)
    image = jax.ShapeDtypeStruct((1, *size, int(model.in_chans)), jnp.float32)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, image)
    return len(out["features"])


def resolve_layers(spec, count: int) -> tuple[int, ...]:
    """``"all"`` → (0, …, count−1); ints or ``"2,3"`` / ``"-1"`` text → non-negative indices in
    the order given (negative ones count from the end); out of range or repeated: ValueError."""
    if isinstance(spec, str):
        if spec.strip() == "all":
            return tuple(range(count))
        try:
            spec = [int(v) for v in spec.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--layers: expected 'all' or comma-separated integers, found "
                             f"{spec!r}") from None
    layers = []
    for i in spec:
        if not -count <= int(i) < count:
            raise ValueError(f"--layers: expected indices in [-{count}, {count}) (the model has "
                             f"{count} layers), found {i}")
        layers.append(int(i) % count)
    if not layers or len(set(layers)) != len(layers):
        raise ValueError(f"--layers: expected distinct layers, found {list(spec)} → {layers}")
    return tuple(layers)


def apply_layer_features(model, variables, images, layers: tuple[int, ...], source: str,
                         mode: str = "cls", *, wavelengths=None) -> tuple:
    """Features (B, F_l) float32 of each of ``layers`` (non-negative block / stage indices) of a
    batch (B, H, W, C), one forward pass; ``source`` from :func:`layer_source`; ``wavelengths``
    (C,) as :func:`apply_features`; traceable."""
    waves = wavelength_kwargs(model, wavelengths)
    if source == "stages":
        if mode != "cls":
            raise ValueError(f"per-stage features are pooled maps: expected mode 'cls', found "
                             f"{mode!r}")
        out = model.apply(variables, images, train=False, **waves)
        last = len(out["features"]) - 1
        return tuple((out["embedding"] if i == last else
                      out["features"][i].astype(jnp.float32).mean(axis=(1, 2))).astype(jnp.float32)
                     for i in layers)
    if mode not in LAYER_MODES:
        raise ValueError(f"per-block features: expected mode in {LAYER_MODES}, found {mode!r} "
                         f"(dinov2_4layer is --mode cls --layers=-4,-3,-2,-1 --layers_concat)")
    out = model.apply(variables, images, train=False, return_layers=tuple(layers), **waves)
    prefix = int(getattr(model, "num_prefix_tokens", 1))  # CLS (+ registers)
    feats = []
    for tokens in out["intermediates"]:
        parts = []
        if mode in ("cls", "cls+avgpool"):
            parts.append(tokens[:, 0])
        if mode in ("avgpool", "cls+avgpool"):
            parts.append(tokens[:, prefix:].mean(axis=1))
        feats.append(jnp.concatenate(parts, axis=-1).astype(jnp.float32))
    return tuple(feats)


class _ByIdentity:
    """A jit-static stand-in for a module whose fields are not hashable (e.g. list-valued)."""

    def __init__(self, module):
        self.module = module

    def __hash__(self):
        return id(self.module)

    def __eq__(self, other):
        return isinstance(other, _ByIdentity) and other.module is self.module


def _static(model):
    try:
        hash(model)
        return model
    except TypeError:
        return _ByIdentity(model)


def _forward(model, mode, img_size, crop_ratio, layers, source, variables, images, wavelengths):
    """A tuple of feature arrays: ``mode``'s features, or one per layer of ``layers``;
    ``wavelengths`` (C,) float32 or None (a traced argument: one program per band count)."""
    if isinstance(model, _ByIdentity):
        model = model.module
    images = resize_center_crop(images.astype(jnp.float32), img_size, crop_ratio)
    if layers is None:
        return (apply_features(model, variables, images, mode, wavelengths=wavelengths),)
    return apply_layer_features(model, variables, images, layers, source, mode,
                                wavelengths=wavelengths)


@functools.cache
def _jitted_forward():
    """:func:`_forward` jitted at its first use, when jax's default devices are known, with the
    train step's XLA:CPU options (``cpu_options.jit_with_step_options``)."""
    return cpu_options.jit_with_step_options(_forward, static_argnums=(0, 1, 2, 3, 4, 5))


def _batches(images_iter, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """Re-chunks arrays (b, H, W, C) of any b into (batch_size, H, W, C) zero-padded batches;
    yields (batch, number of real rows)."""
    if isinstance(images_iter, np.ndarray) or isinstance(images_iter, jax.Array):
        images_iter = [np.asarray(images_iter)]
    buffer, filled = [], 0
    for chunk in images_iter:
        chunk = np.asarray(chunk)
        if chunk.ndim == 3:
            chunk = chunk[None]
        while len(chunk):
            take = min(batch_size - filled, len(chunk))
            buffer.append(chunk[:take])
            filled += take
            chunk = chunk[take:]
            if filled == batch_size:
                yield np.concatenate(buffer), batch_size
                buffer, filled = [], 0
    if filled:
        batch = np.concatenate(buffer)
        pad = np.zeros((batch_size - filled,) + batch.shape[1:], batch.dtype)
        yield np.concatenate([batch, pad]), filled


def extract_features(model, variables, images_iter: Iterable | np.ndarray, *, mode: str = "cls",
                     batch_size: int = 256, img_size: int | None = None,
                     crop_ratio: float = CROP_RATIO, devices=None,
                     wavelengths=None) -> np.ndarray:
    """Features (N, F) float32 of all images, in order.

    ``images_iter``: an array (N, H, W, C) or an iterable of arrays (b, H, W, C) (any b, last one
    ragged), already band-selected and normalised. Each batch is split over ``devices`` (default:
    this process's devices) along the batch axis; ``batch_size`` is rounded up to a multiple of the
    device count and the last batch zero-padded, so one program serves every batch.
    ``img_size``: the model's input size (None: images are fed as they are).
    ``wavelengths``: (C,) µm of the images' bands for a wavelength-conditioned model (DOFA;
    :func:`input_wavelengths`), None for the others (which refuse them: ValueError)."""
    return _extract(model, variables, images_iter, mode, None, None, batch_size, img_size,
                    crop_ratio, devices, wavelengths)[0]


def extract_layer_features(model, variables, images_iter: Iterable | np.ndarray, *,
                           layers: tuple[int, ...], family, mode: str = "cls",
                           batch_size: int = 256, img_size: int | None = None,
                           crop_ratio: float = CROP_RATIO, devices=None,
                           wavelengths=None) -> list[np.ndarray]:
    """Per-layer features: a list of (N, F_l) float32, one per index of ``layers`` (resolved,
    :func:`resolve_layers`), of ``family``'s ``model`` (see the module docstring); one forward
    pass per batch, batched (and given ``wavelengths``) as :func:`extract_features`."""
    return _extract(model, variables, images_iter, mode, tuple(int(i) for i in layers),
                    layer_source(family), batch_size, img_size, crop_ratio, devices, wavelengths)


def _extract(model, variables, images_iter, mode, layers, source, batch_size, img_size,
             crop_ratio, devices, wavelengths) -> list[np.ndarray]:
    from geossl.parallel import mesh as mesh_lib
    wavelength_kwargs(model, wavelengths)  # a fixed-band family refuses them before any compile
    devices = list(jax.local_devices() if devices is None else devices)
    mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "model": 1}, devices)
    n_dev = len(devices)
    if isinstance(images_iter, (np.ndarray, jax.Array)):  # no padding beyond the data
        batch_size = min(int(batch_size), max(1, len(images_iter)))
    batch_size = -(-max(1, int(batch_size)) // n_dev) * n_dev
    if any(isinstance(x, jax.Array) and not x.is_fully_addressable
           for x in jax.tree_util.tree_leaves(variables)):
        # Multi-host training state (fsdp over processes): every process gathers a full copy.
        from jax.experimental import multihost_utils
        variables = multihost_utils.process_allgather(variables, tiled=True)
    variables = jax.device_put(variables, mesh_lib.replicated(mesh))
    if wavelengths is not None:
        wavelengths = jax.device_put(np.asarray(wavelengths, np.float32),
                                     mesh_lib.replicated(mesh))
    static_model = _static(model)
    outputs, pending = [], None

    def collect(item):
        arrays, real = item
        outputs.append([np.asarray(a)[:real] for a in arrays])

    for batch, real in _batches(images_iter, batch_size):
        x = jax.device_put(batch, mesh_lib.batch_sharding(mesh, batch.ndim))
        features = _jitted_forward()(static_model, mode, img_size, float(crop_ratio), layers,
                                     source, variables, x, wavelengths)
        if pending is not None:  # fetch the previous batch while this one runs
            collect(pending)
        pending = (features, real)
    if pending is not None:
        collect(pending)
    if not outputs:
        raise ValueError("extract_features: the image iterator was empty")
    return [np.concatenate(parts).astype(np.float32) for parts in zip(*outputs)]
