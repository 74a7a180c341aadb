"""bfloat16 compute on every backbone family: float32 parameters and gradients, float32 losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geossl import losses, models

CASES = [  # (name, overrides, a bf16 activation, image size); ViT: also tests/test_vit.py
    ("vit_tiny_patch16", dict(patch_size=8, depth=2, img_size=32), "patch_tokens", 32),
    ("resnet18", dict(stage_sizes=(1, 1, 1, 1), width=16), "feature_map", 64),
    ("swin_tiny_patch4_window7_224", dict(img_size=32, window_size=4, depths=(1, 1),
                                          num_heads=(3, 6)), "embedding", 32),
]


@pytest.mark.parametrize("name,kw,out_key,size", CASES)
def test_bfloat16_compute_with_float32_parameters_and_loss(name, kw, out_key, size):
    """The bf16 model keeps float32 parameters, computes its activations in bf16, and the
    gradient of a float32 loss (geossl.losses on its embeddings) is float32, finite and points
    where the float32 model's gradient points."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, size, size, 5)), jnp.float32)
    f32 = models.create(name, in_chans=5, **kw)
    bf16 = models.create(name, in_chans=5, dtype=jnp.bfloat16, **kw)
    variables = jax.jit(f32.init)(jax.random.key(0), x)
    shapes = jax.eval_shape(bf16.init, jax.random.key(0), x)["params"]
    assert {p.dtype for p in jax.tree_util.tree_leaves(shapes)} == {jnp.dtype(jnp.float32)}

    def loss(params, model):
        out, _ = model.apply({**variables, "params": params}, x, train=True,
                             mutable=["batch_stats"])
        e = out["embedding"]
        keys = jax.random.normal(jax.random.key(1), e.shape, jnp.float32)
        y = jnp.eye(4)
        value = losses.soft_contrastive_loss(e, keys, y, y[::-1], temperature=0.2,
                                             soft_weight=1.0)
        return value, out[out_key]

    (v16, act16), g16 = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)(
        variables["params"], bf16)
    (v32, _), g32 = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)(
        variables["params"], f32)
    assert act16.dtype == jnp.bfloat16 and v16.dtype == jnp.float32 and np.isfinite(float(v16))
    assert abs(float(v16) - float(v32)) < 0.05 * abs(float(v32)) + 1e-3
    flat16, flat32 = (np.concatenate([np.ravel(g) for g in jax.tree_util.tree_leaves(g)])
                      for g in (g16, g32))
    assert {g.dtype for g in jax.tree_util.tree_leaves(g16)} == {jnp.dtype(jnp.float32)}
    # bf16 rounding through train-mode BatchNorm moves a random-init ResNet's gradient by ~35%
    # (the float32 reference is not the point): same direction, same scale
    cos = flat16 @ flat32 / (np.linalg.norm(flat16) * np.linalg.norm(flat32))
    assert cos > 0.9 and 0.7 < np.linalg.norm(flat16) / np.linalg.norm(flat32) < 1.3, cos
