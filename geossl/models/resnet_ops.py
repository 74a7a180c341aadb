"""The ResNet's layers with hand-written gradients, for XLA's CPU backend (docs/DESIGN.md
"Performance"; each is tested against torch's layer in float64 by tests/test_custom_gradients.py):
train-mode BatchNorm (``batch_norm_train``) and the stem's 3×3 / 2 max pool (``max_pool_3x3_s2``).
Its 1×1 convolutions are ``layers.channel_matmul``, as every dense layer.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float):
    """Train-mode batch normalisation over every axis but the last: x (..., C) float32, scale and
    bias (C,) → (y (..., C), mean (C,), biased var (C,)). The statistics are two-pass (mean, then
    the centred mean square). The gradient is the closed form (for x̂ = (x − mean)·r, r the
    inverse std, n values per channel): dx = scale·r·(dy − mean(dy) − x̂·mean(dy·x̂)), dscale =
    Σ dy·x̂, dbias = Σ dy; one reduction pass and one elementwise pass, where autodiff of the
    forward makes several. mean and var carry no gradient (running statistics only)."""
    return _bn_forward(x, scale, bias, eps)[0]


def _bn_forward(x, scale, bias, eps):
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes)
    var = jnp.mean(jnp.square(x - mean), axes)
    r = jax.lax.rsqrt(var + eps)
    y = (x - mean) * (r * scale) + bias
    return (y, mean, var), (x, mean, r, scale)


def _bn_backward(eps, res, cotangents):
    del eps
    x, mean, r, scale = res
    dy = cotangents[0]                                 # mean / var: statistics only, no gradient
    axes = tuple(range(x.ndim - 1))
    x_hat = (x - mean) * r
    dbias = jnp.sum(dy, axes)
    dscale = jnp.sum(dy * x_hat, axes)
    n = x.size // x.shape[-1]
    dx = (scale * r) * (dy - (dbias + x_hat * dscale) / n)
    return dx, dscale, dbias


batch_norm_train.defvjp(_bn_forward, _bn_backward)


@jax.custom_vjp
def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """torch's ``max_pool2d(x, 3, stride=2, padding=1)``: x (B,H,W,C) → (B,⌊(H−1)/2⌋+1,
    ⌊(W−1)/2⌋+1,C), padded with −inf. The gradient goes to the first maximum of each window in
    row-major order (a NaN counts as a maximum), as torch's does. The forward keeps which of the
    nine taps won as int8; the backward places each tap's share with one strided pad, all fused into
    one pass (jax's own reduce-window gradient built an int32 index map of the padded input and two
    variadic reduce-windows: 213 → 84 ms for a (16, 112, 112, 64) map, forward and backward)."""
    return _max_pool_forward(x)[0]


def _pool_taps(x: jax.Array):
    """The nine (B,Ho,Wo,C) strided views of x padded by one −inf row / column each side, in
    row-major window order."""
    b, h, w, c = x.shape
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    return [jax.lax.slice(xp, (0, i, j, 0), (b, i + 2 * ho - 1, j + 2 * wo - 1, c), (1, 2, 2, 1))
            for i in range(3) for j in range(3)]


def _max_pool_forward(x):
    taps = _pool_taps(x)
    best, winner = taps[0], jnp.zeros(taps[0].shape, jnp.int8)
    for k, tap in enumerate(taps[1:], start=1):
        take = (tap > best) | jnp.isnan(tap)
        best = jnp.where(take, tap, best)
        winner = jnp.where(take, jnp.int8(k), winner)
    return best, (winner, x.shape)


def _max_pool_backward(res, dy):
    winner, (_, h, w, _) = res
    ho, wo = dy.shape[1:3]
    zero = jnp.zeros((), dy.dtype)
    dx = None
    for k in range(9):
        i, j = divmod(k, 3)
        spread = ((0, 0, 0), (i, h + 2 - i - (2 * ho - 1), 1), (j, w + 2 - j - (2 * wo - 1), 1),
                  (0, 0, 0))                           # tap k's outputs back onto the padded grid
        part = jax.lax.pad(jnp.where(winner == k, dy, zero), zero, spread)
        dx = part if dx is None else dx + part
    return (dx[:, 1:h + 1, 1:w + 1],)


max_pool_3x3_s2.defvjp(_max_pool_forward, _max_pool_backward)
