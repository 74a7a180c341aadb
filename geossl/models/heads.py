"""Projection / prediction heads of the self-supervised objectives.

``MLPHead``: the MoCo-v3 projector and predictor (Chen et al. 2021, ``_build_mlp``): Linear without
bias → BN → ReLU for each hidden layer, and a last Linear optionally followed by a BN without
affine parameters (SimCLR's choice). ``DINOHead``: the DINO / DINOv2 head (Caron et al. 2021,
Oquab et al. 2023): MLP with GELU to a bottleneck → L2 normalisation → weight-normalised linear
without bias onto the prototypes. BatchNorm statistics live in the ``batch_stats`` collection
and, in train mode, are computed over the global batch (see :class:`resnet.BatchNorm`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from geossl.models.layers import gelu
from geossl.models.resnet import BatchNorm

# torch nn.Linear's default: kaiming_uniform(a=sqrt(5)) = U(±1/sqrt(fan_in)).
_TORCH_LINEAR_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
_ACTIVATIONS = {"relu": nn.relu, "gelu": gelu}


def _activation(name: str):
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation: expected one of {sorted(_ACTIVATIONS)}, found {name!r}")
    return _ACTIVATIONS[name]


class MLPHead(nn.Module):
    """MoCo-v3 MLP: x (..., D_in) → (..., out_dim).

    ``num_layers`` Linear layers (hidden width ``hidden_dim``). With ``use_bn``: Linear without
    bias, BN and activation after each hidden layer, and ``last_bn`` adds a BN without scale and
    bias after the last layer (projector: True, predictor: False). Without ``use_bn`` the Linear
    layers carry biases and there is no BN.
    """

    hidden_dim: int
    out_dim: int
    num_layers: int = 2
    use_bn: bool = True
    last_bn: bool = True
    act: str = "relu"
    bn_momentum: float = 0.9
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if self.num_layers < 1:
            raise ValueError(f"MLPHead.num_layers: expected >= 1, found {self.num_layers}")
        act = _activation(self.act)
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            x = nn.Dense(self.out_dim if last else self.hidden_dim, use_bias=not self.use_bn,
                         dtype=self.dtype, kernel_init=_TORCH_LINEAR_INIT, name=f"linear_{i}")(x)
            if self.use_bn and not last:
                x = act(BatchNorm(momentum=self.bn_momentum, dtype=self.dtype, name=f"bn_{i}")(
                    x, train=train))
            elif not last:
                x = act(x)
            elif self.use_bn and self.last_bn:
                x = BatchNorm(momentum=self.bn_momentum, use_scale=False, use_bias=False,
                              dtype=self.dtype, name=f"bn_{i}")(x, train=train)
        return x


class DINOHead(nn.Module):
    """DINO head: x (..., D_in) → prototype scores (..., out_dim), each in [-1, 1] when
    ``norm_last_layer`` (unit input · unit prototype).

    MLP (``num_layers`` Linear layers, GELU, optional BN) to ``bottleneck_dim`` (PerA: 384,
    DINO: 256) → L2 normalise → weight-normalised Linear without bias: prototype k is
    ``g_k · v_k / ||v_k||``. ``norm_last_layer``: g fixed to 1 (no parameter, DINO's frozen
    ``weight_g``); otherwise ``last_layer/weight_g`` (out_dim,) is trained, starting at 1.
    """

    out_dim: int
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    num_layers: int = 3
    norm_last_layer: bool = True
    use_bn: bool = False
    bn_momentum: float = 0.9
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if self.num_layers < 1:
            raise ValueError(f"DINOHead.num_layers: expected >= 1, found {self.num_layers}")
        dense = dict(dtype=self.dtype, kernel_init=nn.initializers.normal(0.02),
                     bias_init=nn.initializers.zeros)
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            x = nn.Dense(self.bottleneck_dim if last else self.hidden_dim, name=f"mlp_{i}", **dense)(x)
            if not last:
                if self.use_bn:
                    x = BatchNorm(momentum=self.bn_momentum, dtype=self.dtype, name=f"bn_{i}")(
                        x, train=train)
                x = gelu(x)
        x = x.astype(jnp.float32)
        # F.normalize(x, eps=1e-12): x / max(||x||, eps)
        x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
        return WeightNormDense(self.out_dim, fixed_scale=self.norm_last_layer, name="last_layer")(x)


class WeightNormDense(nn.Module):
    """Linear without bias, weight-normalised per output: x (..., D) → (..., features).

    ``kernel`` (D, features) is the direction v; ``weight_g`` (features,) the norm g (absent and
    fixed to 1 when ``fixed_scale``). Computed in float32 as (x · v) · g / ||v||: the scale
    applies to the (..., features) output instead of a normalised (D, features) copy of v, and the
    squared norms are a ones-row matmul (full precision) rather than a reduction over v's major
    axis, which XLA's CPU backend runs ~3.6x slower (PerA's 384 × 131072 prototypes: the head's
    forward and backward 270 ms instead of 990; benchmarks/profile_step.py --method pera).
    """

    features: int
    fixed_scale: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        v = self.param("kernel", _TORCH_LINEAR_INIT, (x.shape[-1], self.features), jnp.float32)
        ones = jnp.ones((1, v.shape[0]), jnp.float32)
        sq_norm = jnp.dot(ones, jnp.square(v), precision=jax.lax.Precision.HIGHEST)[0]
        scale = jax.lax.rsqrt(sq_norm)
        if not self.fixed_scale:
            scale = scale * self.param("weight_g", nn.initializers.ones, (self.features,), jnp.float32)
        return jnp.dot(x.astype(jnp.float32), v) * scale
