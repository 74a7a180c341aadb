"""Views rendered inside the jitted step: the host draws the parameters, the device resizes.

Host (grain worker), per view: a method's sampler (e.g. SoftCon's ``raw_two_view_sample``) draws
the ``augment.ViewParams`` exactly as its host path does (same rng calls, so the same seed gives
the same views) and ships, instead of the rendered view,

    raw          (R, R, C) stored dtype (float32 when ``nodata`` is set): ``prepare_raw``, the model
                 bands, zero-padded at the bottom / right to ``raw_size`` when that is set
    view_params  (PARAMS + 3·C,) float32: ``pack_params``

Device: ``render_views(raw (B,R,R,C), params (B,P), spec) → (B,S,S,C) float32`` does what
``augment.render_view`` does on the host: softcon clip in stored units, the crop box and bilinear
resize (align_corners=False, no antialias) with flips as row / column gathers, the map to the
photometric unit domain and brightness/contrast as one per-band affine map, clip (bounded
domains), grayscale, a separable Gaussian blur with mirrored borders (fixed taps up to the largest
σ's radius, weights per sample), solarize, the map to the normalised values, the dropped bands set
to 0 (the coefficients of the host's ``augment.band_plan``); all in float32 elementwise arithmetic
(no matrix units, so no reduced-precision matmul passes on TPU). Host-side cost drops to decoding plus copying the
acquisitions (uint16: 2 bytes a pixel and band, smaller than a rendered float32 view); the device
pays O(S²·C·taps) a view.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from geossl.data import augment, blur
from geossl.data import bands as bands_lib

#: Fixed fields of a packed view: top, left, h, w, hflip, vflip, jitter, gray, blur σ, solarize;
#: then brightness (C), contrast (C) and keep (C: 0 for a dropped band, else 1).
PARAMS = 10
VIEWS = ("auto", "host", "device")


@dataclasses.dataclass(frozen=True)
class RenderSpec:
    """What every view of a batch shares (static under jit): output size, model bands and their
    normalisation, the jitter clip, and which optional steps exist (blur up to ``blur_sigma_max``,
    solarize) so that disabled ones cost nothing."""

    img_size: int
    bands: tuple[str, ...]
    norm: str = "softcon"
    jitter_clip: bool = True
    blur_sigma_max: float = 0.0          # 0: no view is blurred
    blur_truncate: float = 3.0
    solarize: bool = False
    solarize_threshold: float = 0.5


def views_on_device(setting: str) -> bool:
    """config.data.views → whether views are rendered in the step. "auto": on an accelerator
    (the host's cores then only decode), on the host when JAX runs on the CPU (there numpy's
    rendering costs fewer CPU seconds than XLA's; benchmarks/input_pipeline.py)."""
    if setting not in VIEWS:
        raise ValueError(f"config.data.views: expected one of {VIEWS}, found {setting!r}")
    if setting == "auto":
        return jax.default_backend() != "cpu"
    return setting == "device"


# ----- host --------------------------------------------------------------------------------------
def pack_params(params: augment.ViewParams, channels: int) -> np.ndarray:
    """ViewParams → (PARAMS + 3·C,) float32; brightness / contrast broadcast to C (1 when unset);
    blur σ 0 means no blur; keep is 0 at the dropped bands. RGB (torchvision) colour jitter is
    host-only: such params are refused."""
    if params.rgb:
        raise ValueError("device views: RGB colour jitter (saturation / hue, Photometric.rgb) is "
                         "rendered on the host only; set config.data.views = 'host'")
    out = np.zeros(PARAMS + 3 * channels, np.float32)
    out[:4] = params.box
    out[4:PARAMS] = (params.hflip, params.vflip, params.brightness is not None, params.gray,
                     params.blur_sigma or 0.0, params.solarize)
    jitter = params.brightness is not None
    out[PARAMS:PARAMS + channels] = params.brightness if jitter else 1.0
    out[PARAMS + channels:PARAMS + 2 * channels] = params.contrast if jitter else 1.0
    keep = np.ones(channels, np.float32)
    keep[list(params.dropped)] = 0.0
    out[PARAMS + 2 * channels:] = keep
    return out


def prepare_raw(image: np.ndarray, plan: augment.BandPlan, params: augment.ViewParams, *,
                nodata: float | None = None, fill: str = "zero", raw_size: int = 0,
                key: str = "?") -> np.ndarray:
    """One acquisition (H, W, C_in) → (R, R, C) model bands in stored units: no-data pixels of the
    crop box filled as the host path fills them (``fill`` policy of ``geossl.data.bands``),
    zero-padded to ``raw_size`` × ``raw_size`` (if set)."""
    x = augment.take_bands(image, plan.index)
    if nodata is not None or np.issubdtype(x.dtype, np.floating):
        top, left, h, w = params.box
        region = x[top:top + h, left:left + w]
        mask = bands_lib.invalid_mask(region, nodata)
        x = x.astype(np.float32, copy=nodata is not None or mask is not None)
        if mask is not None:
            augment.fill_invalid(x[top:top + h, left:left + w], mask, plan, fill)
    size = raw_size
    if size:
        height, width = x.shape[:2]
        if height > size or width > size:
            raise ValueError(f"record {key}: acquisition of {height}x{width} pixels is larger "
                             f"than data.raw_size={size} (device-side views pad to raw_size)")
        if (height, width) != (size, size):
            x = np.pad(x, ((0, size - height), (0, size - width), (0, 0)))
    return x


# ----- device ------------------------------------------------------------------------------------
def resize_taps(start, length, out: int, flip) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Bilinear taps (i0, i1, frac), each (out,), of ``x[start:start+length]`` resized to ``out``
    samples (align_corners=False, no antialias, edge-clamped): output j = x[i0] + frac·(x[i1] −
    x[i0]); reversed when ``flip``. Indices are absolute (start added)."""
    length = length.astype(jnp.float32)
    j = jnp.arange(out, dtype=jnp.float32)
    src = jnp.maximum((j + 0.5) * (length / out) - 0.5, 0.0)
    i0 = jnp.minimum(jnp.floor(src), length - 1)
    i1 = jnp.minimum(i0 + 1, length - 1)
    frac = src - i0
    start = start.astype(jnp.int32)
    taps = (i0.astype(jnp.int32) + start, i1.astype(jnp.int32) + start, frac)
    return tuple(jnp.where(flip > 0, t[::-1], t) for t in taps)


def _lerp(x: jax.Array, taps, axis: int) -> jax.Array:
    i0, i1, frac = taps
    a = jnp.take(x, i0, axis=axis)
    b = jnp.take(x, i1, axis=axis)
    shape = [1] * x.ndim
    shape[axis] = -1
    return a + frac.reshape(shape) * (b - a)


def blur_weights(sigma, truncate: float, max_sigma: float) -> jax.Array:
    """(2·R + 1,) Gaussian taps, R = int(truncate·max_sigma + 0.5), zero beyond σ's own radius
    int(truncate·σ + 0.5) (scipy's); [.., 1, ..] (the identity) for σ = 0."""
    big = int(truncate * max_sigma + 0.5)
    taps = jnp.arange(-big, big + 1, dtype=jnp.float32)
    radius = jnp.floor(truncate * sigma + 0.5)
    safe = jnp.where(sigma > 0, sigma, 1.0)
    k = jnp.where(jnp.abs(taps) <= radius, jnp.exp(-0.5 * (taps / safe) ** 2), 0.0)
    return k / k.sum()


def _blur_axis(z: jax.Array, k: jax.Array, axis: int) -> jax.Array:
    """Correlation of z with the symmetric taps k along ``axis``, mirrored borders "dcb|abcd"
    (cv2's BORDER_REFLECT_101, as :mod:`geossl.data.blur`): a reflect pad, then one static slice
    per tap."""
    n, big = z.shape[axis], (k.shape[0] - 1) // 2
    if big >= n:   # reflections of reflections: gather the mirrored indices instead
        idx = blur.mirror_index(np.arange(n)[:, None] + np.arange(-big, big + 1)[None, :], n)
        return sum(k[t] * jnp.take(z, idx[:, t], axis=axis) for t in range(2 * big + 1))
    pad = [(0, 0)] * z.ndim
    pad[axis] = (big, big)
    zp = jnp.pad(z, pad, mode="reflect")
    return sum(k[t] * jax.lax.slice_in_dim(zp, t, t + n, axis=axis) for t in range(2 * big + 1))


def _render_one(raw, p, spec: RenderSpec, plan: augment.BandPlan) -> jax.Array:
    """raw (R, R, C), p (P,) → (S, S, C) float32."""
    s = spec.img_size
    c = raw.shape[-1]
    x = raw.astype(jnp.float32)
    if plan.bounds is not None:
        x = jnp.clip(x, plan.bounds[0], plan.bounds[1])
    y = _lerp(x, resize_taps(p[0], p[2], s, p[5]), axis=0)
    y = _lerp(y, resize_taps(p[1], p[3], s, p[4]), axis=1)
    jitter, gray, sigma, solar = p[6] > 0, p[7] > 0, p[8], p[9] > 0
    b, k, keep = p[PARAMS:PARAMS + c], p[PARAMS + c:PARAMS + 2 * c], p[PARAMS + 2 * c:]
    scale, offset = plan.unit_scale, plan.unit_offset
    mean_n = scale * y.mean(axis=(0, 1)) + offset
    gain = jnp.where(jitter, k * b * scale, scale)
    bias = jnp.where(jitter, k * b * offset + (1 - k) * b * mean_n, offset)
    z = y * gain + bias
    if spec.jitter_clip and plan.bounded:
        z = jnp.where(jitter, jnp.clip(z, 0.0, 1.0), z)
    z = jnp.where(gray, jnp.broadcast_to(z.mean(-1, keepdims=True), z.shape), z)
    if spec.blur_sigma_max > 0:
        w = blur_weights(sigma, spec.blur_truncate, spec.blur_sigma_max)
        z = _blur_axis(_blur_axis(z, w, 0), w, 1)
    if spec.solarize:
        z = jnp.where(solar & (z >= spec.solarize_threshold), 1.0 - z, z)
    if plan.to_norm is not None:
        z = z * plan.to_norm[0] + plan.to_norm[1]
    return jnp.where(keep > 0, z, 0.0)


def render_views(raw: jax.Array, params: jax.Array, spec: RenderSpec) -> jax.Array:
    """raw (B, R, R, C) stored units, params (B, PARAMS + 3·C) → views (B, S, S, C) float32."""
    c, want = raw.shape[-1], PARAMS + 3 * len(spec.bands)
    if c != len(spec.bands) or params.shape[-1] != want:
        raise ValueError(f"render_views: expected raw (..., {len(spec.bands)}) and params "
                         f"(..., {want}) for bands {spec.bands}, found {raw.shape} and "
                         f"{params.shape}")
    plan = augment.band_plan(tuple(spec.bands), tuple(spec.bands), spec.norm)
    return jax.vmap(lambda r, p: _render_one(r, p, spec, plan))(raw, params)
