"""The attention formulations the ViT picks per backend agree with a numpy softmax(q kᵀ/√d) v."""

import jax.numpy as jnp
import numpy as np
import pytest

from geossl.models.layers import attention


def _numpy_attention(q, k, v):
    q, k, v = (np.asarray(t, np.float64).transpose(0, 2, 1, 3) for t in (q, k, v))
    logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return (w @ v).transpose(0, 2, 1, 3)


@pytest.mark.parametrize("implementation", ["matmul", "xla", None])
def test_attention_matches_numpy(implementation):
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 7, 3, 8)).astype(np.float32) * 2 for _ in range(3))
    out = attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), implementation)
    np.testing.assert_allclose(np.asarray(out), _numpy_attention(q, k, v), rtol=1e-5, atol=1e-5)


def test_bfloat16_attention_keeps_dtype_and_accuracy():
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 9, 2, 16)).astype(np.float32) for _ in range(3))
    out = attention(*(jnp.asarray(t, jnp.bfloat16) for t in (q, k, v)), "matmul")
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), _numpy_attention(q, k, v), atol=3e-2)


def test_unknown_implementation_is_named():
    x = jnp.zeros((1, 2, 1, 4))
    with pytest.raises(ValueError, match="found 'flash'"):
        attention(x, x, x, "flash")
