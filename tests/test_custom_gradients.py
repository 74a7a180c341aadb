"""The layers with hand-written gradients (geossl.models.resnet_ops, layers.channel_matmul,
layers.channel_affine and layers.Dense) and layers.gelu's erf form against torch's layers in float64 and flax's own: values
and every gradient, ties and odd sizes included."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geossl.models import swin
from geossl.models.layers import Dense, channel_affine, channel_matmul, gelu
from geossl.models.resnet_ops import batch_norm_train, max_pool_3x3_s2


def _torch_grads(fn, *arrays):
    """fn over float64 torch tensors of ``arrays`` → (output, [gradient of sum(output · t)]) with t
    a fixed random cotangent; numpy float64."""
    torch = pytest.importorskip("torch")
    ts = [torch.from_numpy(np.asarray(a, np.float64)).requires_grad_(True) for a in arrays]
    out = fn(*ts)
    t = torch.from_numpy(np.random.default_rng(9).normal(size=tuple(out.shape)))
    (out * t).sum().backward()
    return out.detach().numpy(), [a.grad.numpy() for a in ts], t.numpy()


def _ours(fn, cotangent, *arrays):
    args = [jnp.asarray(a, jnp.float32) for a in arrays]
    out, vjp = jax.vjp(fn, *args)
    return np.asarray(out), [np.asarray(g) for g in vjp(jnp.asarray(cotangent, jnp.float32))]


@pytest.mark.parametrize("shape", [(2, 9, 8, 3), (1, 7, 7, 2), (2, 1, 4, 1), (1, 12, 11, 5)])
def test_max_pool_matches_torch_with_ties(shape):
    """Values from {0, 1, 2} (after a ReLU most windows tie at 0): torch sends each window's
    gradient to its first maximum in row-major order; a wrong tie rule or a misplaced tap moves
    whole cotangents. A NaN wins its windows."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).integers(0, 3, size=shape).astype(np.float64)
    if shape[1] * shape[2] > 50:
        x[0, 5, 4, 0] = np.nan
    pool = lambda a: torch.nn.functional.max_pool2d(a.permute(0, 3, 1, 2), 3, 2, 1)
    ref, (ref_dx,), t = _torch_grads(lambda a: pool(a).permute(0, 2, 3, 1), x)
    ours, (dx,) = _ours(max_pool_3x3_s2, t, x)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, equal_nan=True)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-6, atol=1e-6)


def test_max_pool_matches_jax_reduce_window_on_distinct_values():
    """Without ties the gradient is unique: it equals jax's own reduce-window gradient."""
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 14, 13, 4))
    ref = lambda a: nn.max_pool(a, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    t = jax.random.normal(jax.random.PRNGKey(1), ref(x).shape)
    g_ref = jax.grad(lambda a: jnp.sum(ref(a) * t))(x)
    g = jax.grad(lambda a: jnp.sum(max_pool_3x3_s2(a) * t))(x)
    np.testing.assert_array_equal(max_pool_3x3_s2(x), ref(x))
    np.testing.assert_allclose(g, g_ref, atol=1e-6)


@pytest.mark.parametrize("cin,cout", [(6, 24), (24, 6)])
def test_channel_matmul_matches_torch_1x1_conv(cin, cout):
    """Both branches of the weight gradient (narrow input or narrow output second)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x, w = rng.normal(size=(2, 5, 3, cin)), rng.normal(size=(cin, cout))
    conv = lambda a, k: torch.nn.functional.conv2d(a.permute(0, 3, 1, 2),
                                                   k.T[:, :, None, None]).permute(0, 2, 3, 1)
    ref, (ref_dx, ref_dw), t = _torch_grads(conv, x, w)
    ours, (dx, dw) = _ours(channel_matmul, t, x, w)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, ref_dw, rtol=1e-5, atol=1e-5)


def test_channel_affine_matches_torch_linear():
    """x @ w + b over (B, nW, N, C) rows: the input, weight and bias gradients (the bias's summed
    over every leading axis) against torch's linear in float64."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x, w, b = rng.normal(size=(2, 3, 5, 8)), rng.normal(size=(8, 12)), rng.normal(size=12)
    ref, ref_grads, t = _torch_grads(lambda a, k, c: torch.nn.functional.linear(a, k.T, c), x, w, b)
    ours, grads = _ours(channel_affine, t, x, w, b)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(grads, ref_grads):
        np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-4)


def test_window_attention_bias_gradients_compile_without_reduce_windows():
    """Swin's qkv bias gradient sums the q, k, v gradients laid out (B, nW, N, 3, heads, d). Left
    to autodiff the sum keeps that layout, and XLA's CPU backend rewrote it into a reduce-window
    (~3% of a Swin-T step); channel_affine sums (rows, 3C)."""
    attn = swin.WindowAttention(3, (7, 7))
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 49, 96))
    params = attn.init(jax.random.PRNGKey(1), x)
    grad = jax.jit(jax.grad(lambda p: jnp.sum(attn.apply(p, x) ** 2)))
    assert "reduce-window(" not in grad.lower(params).compile().as_text()


def test_batch_norm_train_matches_torch():
    """Output, biased statistics and the closed-form gradients of x, scale and bias."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 4, 5, 6)) * 2 + 1
    scale, bias = rng.normal(size=6), rng.normal(size=6)
    bn = lambda a, g, b: torch.nn.functional.batch_norm(
        a.permute(0, 3, 1, 2), None, None, g, b, training=True, eps=1e-5).permute(0, 2, 3, 1)
    ref, ref_grads, t = _torch_grads(bn, x, scale, bias)
    (y, mean, var), vjp = jax.vjp(lambda a, g, b: batch_norm_train(a, g, b, 1e-5),
                                  *(jnp.asarray(v, jnp.float32) for v in (x, scale, bias)))
    grads = vjp((jnp.asarray(t, jnp.float32), jnp.zeros(6), jnp.zeros(6)))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mean, x.mean((0, 1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, x.var((0, 1, 2)), rtol=1e-5)
    for ours, theirs in zip(grads, ref_grads):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
@pytest.mark.parametrize("features,use_bias", [(48, True), (5, False)])
def test_dense_equals_flax_dense(features, use_bias, dtype):
    """Same parameters from the same rng, same outputs and gradients as nn.Dense (wider and
    narrower than its input, so both weight-gradient branches run), and the same dtype rule."""
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 7, 12))
    kw = dict(use_bias=use_bias, dtype=dtype, kernel_init=nn.initializers.truncated_normal(0.02))
    ours, ref = Dense(features, **kw), nn.Dense(features, **kw)
    p_ours, p_ref = ours.init(jax.random.PRNGKey(1), x), ref.init(jax.random.PRNGKey(1), x)
    jax.tree.map(np.testing.assert_array_equal, p_ours, p_ref)
    p = jax.tree.map(lambda a: a + 0.1, p_ref)           # a non-zero bias
    y_ours, y_ref = ours.apply(p, x), ref.apply(p, x)
    assert y_ours.dtype == y_ref.dtype
    tol = 1e-6 if dtype is None else 2e-2
    np.testing.assert_allclose(np.float32(y_ours), np.float32(y_ref), atol=tol, rtol=tol)
    t = jax.random.normal(jax.random.PRNGKey(2), y_ref.shape)
    loss = lambda m: jax.grad(lambda p, x: jnp.sum(m.apply(p, x).astype(jnp.float32) * t),
                              argnums=(0, 1))(p, x)
    for a, b in zip(jax.tree.leaves(loss(ours)), jax.tree.leaves(loss(ref))):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(np.float32(a), np.float32(b), atol=tol * 10, rtol=tol)


def test_gelu_matches_torch_exact_gelu_in_both_tails():
    """Values and gradient against torch's exact GELU in float64, from −12 (where 1 + erf rounds to
    0 in float32) through 0 to +12; and the erfc form of jax.nn.gelu in float32."""
    torch = pytest.importorskip("torch")
    x = np.concatenate([np.linspace(-12, 12, 241), [-1e-3, 1e-6, 0.0, 3.5e-2, 40.0, -40.0]])
    ref, (ref_grad,), t = _torch_grads(torch.nn.functional.gelu, x)
    out, (grad,) = _ours(gelu, t, x)
    np.testing.assert_allclose(out, ref, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(out, jax.nn.gelu(jnp.float32(x), approximate=False), atol=1e-6)
    assert gelu(jnp.ones((2,), jnp.bfloat16)).dtype == jnp.bfloat16
