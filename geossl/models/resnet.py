"""ResNet in the torchvision v1.5 layout (stride in the 3x3 conv of the bottleneck).

Parameter names mirror torchvision's state-dict keys (``layer2.0.downsample.1`` → ``layer2_0/
downsample_1``), so :mod:`geossl.convert.lib.resnet_keys` is a plain table. Padding follows torch
exactly: conv1 7x7/2 pad 3, max-pool 3x3/2 pad 1 (padded with -inf), 3x3 convs pad 1.

BatchNorm keeps ``batch_stats`` ``{mean, var}`` and, in train mode, normalises with the statistics
of the whole batch it sees: under ``jax.jit`` with a batch sharded over devices that is the global
batch (like torch's SyncBatchNorm), no axis name needed. The running variance is updated with the
*unbiased* batch variance, as torch does, so exported running stats follow torch's semantics.

CPU speed (benchmarks/profile_step.py, docs/DESIGN.md "Performance"): train-mode BatchNorm and the
max pool use the hand-written gradients of :mod:`geossl.models.resnet_ops`, 1×1 convolutions
``layers.channel_matmul``; the sums are torch's (tests compare gradients with torch in float64).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from geossl.models import vit
from geossl.models.family import Family, module_fields
from geossl.models.layers import channel_matmul
from geossl.models.resnet_ops import batch_norm_train, max_pool_3x3_s2

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), an untruncated normal.
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

BLOCKS = ("basic", "bottleneck")


class Conv(nn.Module):
    """Bias-free k×k convolution with symmetric zero padding (B,H,W,Cin) → (B,H',W',Cout); the
    parameter is flax ``nn.Conv``'s (``kernel`` (k,k,Cin,Cout), same initialiser and rng).

    A 1×1 convolution is computed as a matmul over the channels of the (strided) input: the same
    sums, but XLA's CPU backend then takes the weight gradient as one matmul instead of a
    convolution over transposed activations (benchmarks/profile_step.py).
    """

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s, p = self.kernel_size, self.stride, self.padding
        kernel = self.param("kernel", _CONV_INIT, (k, k, x.shape[-1], self.features), jnp.float32)
        x, w = x.astype(self.dtype), kernel.astype(self.dtype)
        if k == 1 and p == 0:
            return channel_matmul(x[:, ::s, ::s], w[0, 0])
        return jax.lax.conv_general_dilated(x, w, (s, s), ((p, p), (p, p)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))




class BatchNorm(nn.Module):
    """torch-style BatchNorm over the last axis: x (..., C) → (..., C).

    ``momentum`` uses the flax convention (running = momentum·running + (1−momentum)·batch), so
    torch's momentum 0.1 is 0.9 here. Train mode normalises with the biased batch variance and
    updates the running variance with the unbiased one (n/(n−1)), exactly like torch.
    Statistics are computed in float32; the output has ``dtype`` (default: the input's).
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    use_scale: bool = True
    use_bias: bool = True
    scale_init: Any = nn.initializers.ones
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        xf = x.astype(jnp.float32)
        scale = (self.param("scale", self.scale_init, (c,), jnp.float32) if self.use_scale
                 else jnp.ones((c,), jnp.float32))
        bias = (self.param("bias", nn.initializers.zeros, (c,), jnp.float32) if self.use_bias
                else jnp.zeros((c,), jnp.float32))
        if train:
            y, mean, var = batch_norm_train(xf, scale, bias, self.epsilon)
            n = x.size // c
            if not self.is_initializing():
                unbiased = var * (n / max(n - 1, 1))
                ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * unbiased
        else:
            y = (xf - ra_mean.value) * (jax.lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
        return y.astype(self.dtype or x.dtype)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One residual block of the plan: its name, width, stride and whether it has a downsample."""

    name: str
    planes: int
    stride: int
    downsample: bool


def stage_plan(stage_sizes: Sequence[int], block: str, width: int = 64) -> list[BlockSpec]:
    """The blocks of a ResNet in torchvision order (shared by the model and its key table)."""
    if block not in BLOCKS:
        raise ValueError(f"ResNet block: expected one of {BLOCKS}, found {block!r}")
    expansion = 4 if block == "bottleneck" else 1
    inplanes, plan = width, []
    for s, n in enumerate(stage_sizes):
        planes = width * 2**s
        for j in range(n):
            stride = 2 if (s > 0 and j == 0) else 1
            down = j == 0 and (stride != 1 or inplanes != planes * expansion)
            plan.append(BlockSpec(f"layer{s + 1}_{j}", planes, stride, down))
            inplanes = planes * expansion
    return plan


class _Block(nn.Module):
    """Shared fields of the residual blocks."""

    planes: int
    stride: int
    downsample: bool
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    zero_init_last_bn: bool = False

    def conv(self, features, kernel, stride, name):
        return Conv(features, kernel, stride, (kernel - 1) // 2, self.dtype, name=name)

    def norm(self, name, last=False):
        init = nn.initializers.zeros if (last and self.zero_init_last_bn) else nn.initializers.ones
        return BatchNorm(momentum=self.bn_momentum, epsilon=self.bn_eps, scale_init=init,
                         dtype=self.dtype, name=name)

    def shortcut(self, x, out_features, train):
        if not self.downsample:
            return x
        y = self.conv(out_features, 1, self.stride, "downsample_0")(x)
        return self.norm("downsample_1")(y, train=train)


class BasicBlock(_Block):
    """3x3 → 3x3, expansion 1 (resnet18/34)."""

    @nn.compact
    def __call__(self, x, train: bool):
        y = nn.relu(self.norm("bn1")(self.conv(self.planes, 3, self.stride, "conv1")(x), train=train))
        y = self.norm("bn2", last=True)(self.conv(self.planes, 3, 1, "conv2")(y), train=train)
        return nn.relu(y + self.shortcut(x, self.planes, train))


class Bottleneck(_Block):
    """1x1 → 3x3 (strided, v1.5) → 1x1, expansion 4 (resnet50/101)."""

    @nn.compact
    def __call__(self, x, train: bool):
        y = nn.relu(self.norm("bn1")(self.conv(self.planes, 1, 1, "conv1")(x), train=train))
        y = nn.relu(self.norm("bn2")(self.conv(self.planes, 3, self.stride, "conv2")(y), train=train))
        y = self.norm("bn3", last=True)(self.conv(4 * self.planes, 1, 1, "conv3")(y), train=train)
        return nn.relu(y + self.shortcut(x, 4 * self.planes, train))


class ResNet(nn.Module):
    """torchvision ResNet without ``fc``: images (B,H,W,C) → dict.

    Output: ``"embedding"`` (B,F) global average pool (torch's ``avgpool`` flattened, float32),
    ``"features"`` the 4 stage maps [(B,H/4,W/4,c1), …, (B,H/32,W/32,F)], ``"feature_map"`` the last.
    ``dtype`` is the compute dtype; parameters and batch statistics are float32.
    """

    stage_sizes: Sequence[int]
    block: str = "bottleneck"
    in_chans: int = 3
    width: int = 64
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    zero_init_last_bn: bool = False
    remat: bool = False

    @property
    def num_features(self) -> int:
        return self.width * 2 ** (len(self.stage_sizes) - 1) * (4 if self.block == "bottleneck" else 1)

    @property
    def stride(self) -> int:
        """Downsampling of the last stage: 4 in the stem (conv1, max pool), then 2 per stage."""
        return 4 * 2 ** (len(self.stage_sizes) - 1)

    def stage_grid(self, stage: int) -> tuple[float, float]:
        """(origin, pitch) in input pixels (pixel i spans [i, i + 1)) of stage ``stage``'s map
        (1-based): cell j's receptive field is centred at origin + pitch·j. The symmetric
        (k − 1)/2 paddings centre it on input pixel pitch·j, so origin 0.5, not pitch/2."""
        return 0.5, float(4 * 2 ** (stage - 1))

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, stochastic: bool = False) -> dict:
        """x (B,H,W,C) → {"embedding" (B,F), "features" [4 stage maps], "feature_map"}.

        train: BatchNorm normalises with (and updates) batch statistics; stochastic: accepted for
        the common model interface (no stochastic layers here).
        """
        del stochastic
        if x.ndim != 4 or x.shape[-1] != self.in_chans:
            raise ValueError(f"ResNet input: expected (B,H,W,{self.in_chans}) NHWC, found {x.shape}")
        x = x.astype(self.dtype)
        x = Conv(self.width, 7, 2, 3, self.dtype, name="conv1")(x)
        x = BatchNorm(momentum=self.bn_momentum, epsilon=self.bn_eps, dtype=self.dtype, name="bn1")(
            x, train=train)
        x = max_pool_3x3_s2(nn.relu(x))
        cls = Bottleneck if self.block == "bottleneck" else BasicBlock
        if self.remat:
            cls = nn.remat(cls, static_argnums=(2,))
        make = functools.partial(cls, dtype=self.dtype, bn_momentum=self.bn_momentum,
                                 bn_eps=self.bn_eps, zero_init_last_bn=self.zero_init_last_bn)
        features, stage = [], "layer1"
        for spec in stage_plan(self.stage_sizes, self.block, self.width):
            if not spec.name.startswith(stage + "_"):
                features.append(x)
                stage = spec.name.split("_")[0]
            x = make(spec.planes, spec.stride, spec.downsample, name=spec.name)(x, train)
        features.append(x)
        embedding = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return {"embedding": embedding, "features": features, "feature_map": x}


RESNET_CONFIGS: dict[str, dict] = {
    "resnet18": dict(stage_sizes=(2, 2, 2, 2), block="basic"),
    "resnet34": dict(stage_sizes=(3, 4, 6, 3), block="basic"),
    "resnet50": dict(stage_sizes=(3, 4, 6, 3), block="bottleneck"),
    "resnet101": dict(stage_sizes=(3, 4, 23, 3), block="bottleneck"),
}


def resnet(name: str, *, img_size=None, **overrides) -> ResNet:
    """``resnet("resnet50", in_chans=13)``: a named configuration with field overrides. A ResNet
    takes any image size: ``img_size`` is accepted and ignored."""
    del img_size
    if name not in RESNET_CONFIGS:
        raise ValueError(f"unknown ResNet {name!r}: expected one of {sorted(RESNET_CONFIGS)}")
    return ResNet(**{**RESNET_CONFIGS[name], **overrides})


FAMILY = Family(
    name="resnet", names=tuple(RESNET_CONFIGS), build=resnet,
    kwargs=module_fields(ResNet) | {"img_size"}, first_layer=("conv1",),
    # a ViT's config.model serves a ResNet: its structure fields are dropped by create_from_config
    ignores=vit.FAMILY.kwargs - module_fields(ResNet), feature_maps=True)
