"""bfloat16 dense layers accumulate in float32 on the CPU (the suite's backend):
layers.channel_matmul (every Dense layer and ResNet 1×1 convolution) with bfloat16 operands asks
XLA for float32 results in the forward and in both gradients (XLA:CPU's bfloat16 kernels run only
then; a bfloat16 result makes it convert the operands to float32), and its values are the float64
products of the bfloat16 operands rounded once to bfloat16."""

import re
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geossl import models
from geossl.models.layers import channel_affine, channel_matmul

BF16 = jnp.bfloat16
ULP = 2.0 ** -7            # bfloat16's spacing relative to a value (8 significant bits)
F32_RESULT = ("dot_general", ("bf16", "bf16"), "f32")


def _f64(x):
    return np.asarray(jnp.asarray(x, jnp.float32), np.float64)


def _products(fn, *args) -> Counter:
    """(operation, operand dtypes, result dtype) of every dot_general / convolution in the lowered
    value and gradient (to every argument) of a float32 loss of ``fn(*args)``."""
    def loss(*a):
        y = fn(*a).astype(jnp.float32)
        return jnp.sum(y * jnp.linspace(-1.0, 1.0, y.size).reshape(y.shape))
    grad = jax.value_and_grad(loss, argnums=tuple(range(len(args))))
    text = jax.jit(grad).lower(*args).as_text()
    found = re.findall(r"stablehlo\.(dot_general|convolution)[^\n]*: \(tensor<[^>]*x(\w+)>, "
                       r"tensor<[^>]*x(\w+)>\) -> tensor<[^>]*x(\w+)>", text)
    return Counter((op, (a, b), out) for op, a, b, out in found)


@pytest.mark.parametrize("cin,cout", [(12, 5), (5, 12)])   # both weight-gradient branches
def test_bfloat16_channel_matmul_is_rounded_float64_product_both_ways(cin, cout):
    """Forward, input and weight gradients: bfloat16, within one rounding of numpy's float64
    product of the bfloat16 operands (a transposed or bfloat16-accumulated product is not)."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((3, 40, cin)), BF16)
    w = jnp.asarray(rng.standard_normal((cin, cout)), BF16)
    y, vjp = jax.vjp(channel_matmul, x, w)
    g = jnp.asarray(rng.standard_normal(y.shape), BF16)
    dx, dw = vjp(g)
    assert y.dtype == dx.dtype == dw.dtype == BF16
    refs = (_f64(x) @ _f64(w), _f64(g) @ _f64(w).T, np.einsum("abi,abo->io", _f64(x), _f64(g)))
    for ours, ref in zip((y, dx, dw), refs):
        np.testing.assert_allclose(_f64(ours), ref, rtol=ULP, atol=ULP * np.abs(ref).max())
    assert _products(channel_matmul, x, w) == Counter({F32_RESULT: 3})


def test_float32_channel_affine_keeps_float32_products():
    x, w, b = jnp.ones((4, 6)), jnp.ones((6, 3)), jnp.ones((3,))
    assert _products(channel_affine, x, w, b) == Counter(
        {("dot_general", ("f32", "f32"), "f32"): 3})


def _model_products(name, kw):
    model = models.create(name, in_chans=5, dtype=BF16, **kw)
    x = jnp.ones((2, 32, 32, 5))
    variables = jax.jit(model.init)(jax.random.key(0), x)

    def embed(params):
        out, _ = model.apply({**variables, "params": params}, x, train=True,
                             mutable=["batch_stats"])
        return out["embedding"]

    return _products(embed, variables["params"])


def test_bfloat16_resnet_asks_for_float32_products_only():
    """Every matrix product of a bfloat16 ResNet's train-mode forward and gradient (its 1×1
    convolutions) has bfloat16 operands and a float32 result; its 3×3 / 7×7 convolutions are XLA's
    and keep the compute dtype."""
    found = _model_products("resnet18", dict(stage_sizes=(1, 1, 1, 1), width=16))
    dots = {k: n for k, n in found.items() if k[0] == "dot_general"}
    assert set(dots) == {F32_RESULT} and dots[F32_RESULT] >= 3, dots
    convolutions = {k for k in found if k[0] == "convolution"}
    assert convolutions == {("convolution", ("bf16", "bf16"), "bf16")}


@pytest.mark.parametrize("name,kw,dense_layers", [
    ("vit_tiny_patch16", dict(patch_size=8, depth=2, img_size=32), 2 * 4),
    ("swin_tiny_patch4_window7_224", dict(img_size=32, window_size=4, depths=(1, 1),
                                          num_heads=(3, 6)), 2 * 4 + 1),   # + patch merging
])
def test_bfloat16_transformer_dense_layers_ask_for_float32_products(name, kw, dense_layers):
    """Each dense layer (qkv, proj, fc1, fc2 per block; Swin's patch merging) makes three float32-
    result products (forward, input and weight gradients); the attention's q·kᵀ and p·v stay
    bfloat16 (XLA fuses them with the softmax in float32)."""
    found = _model_products(name, kw)
    assert found[F32_RESULT] == 3 * dense_layers, found
