"""Tensor helpers on images and their patch grids, shared by methods (bottom layer, pure jnp).

Images are NHWC. Patches are row-major over the grid and each is flattened in (p, p, C) order, as
MAE's ``patchify`` and PerA's pixel targets lay them out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from geossl import masking


def patchify(x: jax.Array, p: int) -> jax.Array:
    """(B,H,W,C) → (B, (H/p)(W/p), p·p·C): row-major patches, each flattened in (p, p, C) order."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: jax.Array, p: int, grid: tuple[int, int]) -> jax.Array:
    """(B, gh·gw, p·p·C) → (B, gh·p, gw·p, C): the inverse of :func:`patchify`."""
    b, (gh, gw) = x.shape[0], grid
    c = x.shape[-1] // (p * p)
    x = x.reshape(b, gh, gw, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, gh * p, gw * p, c)


def fill_masked_patches(x: jax.Array, mask: jax.Array, fill: float = 0.0) -> jax.Array:
    """x (B,H,W,C), mask (B,gh,gw) bool (True = dropped) → x with the dropped patches set to fill."""
    factor = (x.shape[1] // mask.shape[1], x.shape[2] // mask.shape[2])
    pixel = masking.upsample_mask(mask, factor)
    return jnp.where(pixel[..., None], jnp.asarray(fill, x.dtype), x)


def pixel_shuffle(x: jax.Array, s: int, c: int) -> jax.Array:
    """(B,h,w,c·s·s) → (B,h·s,w·s,c); channel index c_·s² + i·s + j (torch ``PixelShuffle``)."""
    b, h, w, _ = x.shape
    x = x.reshape(b, h, w, c, s, s).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, h * s, w * s, c)


def align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 linear-interpolation weights with corners aligned: output i samples
    input position i·(n_in − 1)/(n_out − 1) (torch ``align_corners=True``)."""
    w = np.zeros((n_out, n_in), np.float64)
    if n_out == 1 or n_in == 1:
        w[:, 0] = 1.0
        return w.astype(np.float32)
    pos = np.arange(n_out) * (n_in - 1) / (n_out - 1)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - lo
    w[np.arange(n_out), lo] = 1.0 - frac
    w[np.arange(n_out), lo + 1] += frac
    return w.astype(np.float32)


def resize_align_corners(x: jax.Array, size: int) -> jax.Array:
    """(B,H,W,C) → (B,size,size,C), bilinear with corners aligned, separable (exact weights)."""
    wh = jnp.asarray(align_corners_matrix(x.shape[1], size))
    ww = jnp.asarray(align_corners_matrix(x.shape[2], size))
    return jnp.einsum("ih,jw,bhwc->bijc", wh, ww, x.astype(jnp.float32))


def sincos_pos_embed(dim: int, grid: tuple[int, int]) -> np.ndarray:
    """(gh·gw, dim) float32 fixed 2-D sine-cosine position embedding of a row-major grid, as MAE's
    ``get_2d_sincos_pos_embed``: the first half of the channels encodes the column, the second the
    row (MAE's meshgrid puts w first), each as [sin(pos·ω_k), cos(pos·ω_k)] with
    ω_k = 10000^(−k/(dim/4)), k = 0..dim/4−1."""
    if dim % 4:
        raise ValueError(f"sincos_pos_embed: expected a width divisible by 4, found {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    rows, cols = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")

    def encode(pos):
        angle = pos.reshape(-1, 1) * omega[None]
        return np.concatenate([np.sin(angle), np.cos(angle)], axis=1)

    return np.concatenate([encode(cols), encode(rows)], axis=1).astype(np.float32)
