"""ViT building blocks (DINOv2 names) and the bicubic resampling matrices shared with the converter.

The resampling reproduces PyTorch's ``F.interpolate(mode="bicubic", align_corners=False)`` as two
small matrices (one per axis) computed in numpy at trace time, so a position table resized here
equals the one timm resizes, both with ``antialias=True`` (timm's default) and without, and, with
the coordinate scale of a ``scale_factor``, the one DINOv2 resizes (:func:`resize_pos_table`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LN_EPS = 1e-6
dense_init = nn.initializers.truncated_normal(0.02)


# ----- bicubic resampling (numpy, static shapes) ------------------------------------------------
def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter ``a``."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def bicubic_matrix(in_size: int, out_size: int, antialias: bool = True,
                   scale: float | None = None) -> np.ndarray:
    """(out_size, in_size) float64 weights W with ``y = W @ x`` = PyTorch's 1-D bicubic resize.

    antialias=False: ``upsample_bicubic2d`` (a=-0.75, source index clamped at the border).
    antialias=True: ``_upsample_bicubic2d_aa`` (a=-0.5, support widened by the scale when
    shrinking, weights renormalised over the in-range taps), which is what timm uses.
    scale: input pixels per output pixel, output pixel i centred on input ``scale·(i + ½)``;
    default in_size / out_size (``F.interpolate(size=...)``). ``F.interpolate(scale_factor=f)``
    maps with 1 / f instead, whatever the output size floor(in_size·f) works out to.
    """
    scale = in_size / out_size if scale is None else float(scale)
    if scale <= 0:
        raise ValueError(f"bicubic_matrix: expected a scale > 0, found {scale}")
    w = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    if not antialias:
        src = scale * (rows + 0.5) - 0.5
        base = np.floor(src).astype(int)
        t = src - base
        for k in (-1, 0, 1, 2):
            idx = np.clip(base + k, 0, in_size - 1)
            np.add.at(w, (rows, idx), _cubic(t - k, -0.75))
        return w
    support = 2.0 * scale if scale >= 1.0 else 2.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    for i in rows:
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)  # int() truncates toward zero, as in C++
        hi = min(int(center + support + 0.5), in_size)
        taps = _cubic((np.arange(lo, hi) - center + 0.5) * inv, -0.5)
        w[i, lo:hi] = taps / taps.sum()
    return w


def resize_grid(table, grid: tuple[int, int], antialias: bool = True,
                scale: tuple[float, float] | None = None):
    """(g0h, g0w, D) → (gh, gw, D) bicubic; numpy in → numpy float64 math, jax in → float32 jax.

    scale: (rows, columns) coordinate scales of :func:`bicubic_matrix` (default g0 / g per axis).
    The same grid returns ``table`` unchanged.
    """
    (h0, w0), (gh, gw) = table.shape[:2], grid
    if (h0, w0) == (gh, gw):
        return table
    sh, sw = (None, None) if scale is None else scale
    mh, mw = bicubic_matrix(h0, gh, antialias, sh), bicubic_matrix(w0, gw, antialias, sw)
    if isinstance(table, np.ndarray):
        return np.einsum("ih,jw,hwd->ijd", mh, mw, table.astype(np.float64))
    f32 = jnp.float32
    out = jnp.einsum("jw,hwd->hjd", jnp.asarray(mw, f32), table.astype(f32),
                     precision=jax.lax.Precision.HIGHEST)
    return jnp.einsum("ih,hjd->ijd", jnp.asarray(mh, f32), out, precision=jax.lax.Precision.HIGHEST)


#: How a ViT resizes its stored position table for another patch grid (``pos_embed_resize``).
POS_EMBED_RESIZE = ("timm", "dinov2")
#: DINOv2 adds 0.1 to the target grid in its scale factor (against a floating-point error of
#: floor(g0·g/g0); facebookresearch/dino issue 8).
DINOV2_OFFSET = 0.1


def resize_pos_table(table, grid: tuple[int, int], rule: str = "timm"):
    """Patch position table (g0h, g0w, D) → (gh, gw, D) by ``rule``; the same grid: ``table``.

    "timm": timm's ``resample_abs_pos_embed`` (``dynamic_img_size``, weight loading):
    ``F.interpolate(size=(gh, gw), mode="bicubic", antialias=True)``.
    "dinov2": DINOv2's ``interpolate_pos_encoding`` (PerA's local crops):
    ``F.interpolate(scale_factor=((gh + 0.1) / g0h, (gw + 0.1) / g0w), mode="bicubic",
    antialias=False)``: output gh × gw, coordinates mapped with g0 / (g + 0.1), not g0 / g.
    """
    if rule not in POS_EMBED_RESIZE:
        raise ValueError(f"pos_embed_resize: expected one of {POS_EMBED_RESIZE}, found {rule!r}")
    (h0, w0), (gh, gw) = table.shape[:2], grid
    if rule == "timm":
        return resize_grid(table, grid, antialias=True)
    return resize_grid(table, grid, antialias=False,
                       scale=(h0 / (gh + DINOV2_OFFSET), w0 / (gw + DINOV2_OFFSET)))


# ----- transformer layers -----------------------------------------------------------------------
class PatchEmbed(nn.Module):
    """(B,H,W,C) → (B,H/p,W/p,D): a p×p stride-p conv named ``proj`` (timm / DINOv2
    ``patch_embed.proj``), then, when ``norm_eps`` is set, a LayerNorm ``norm`` (Swin)."""

    embed_dim: int
    patch_size: int
    dtype: Any = jnp.float32
    norm_eps: float | None = None  # None: no norm (ViT); Swin: torch's 1e-5

    @nn.compact
    def __call__(self, x):
        p = self.patch_size
        x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                    kernel_init=nn.initializers.lecun_normal(), name="proj")(x.astype(self.dtype))
        if self.norm_eps is not None:
            x = nn.LayerNorm(self.norm_eps, dtype=self.dtype, name="norm")(x)
        return x


class LayerScale(nn.Module):
    """x * gamma, gamma (D,) initialised to ``init_value`` (CaiT / DINOv2 ``ls1``, ``ls2``)."""

    init_value: float

    @nn.compact
    def __call__(self, x):
        gamma = self.param("gamma", nn.initializers.constant(self.init_value), (x.shape[-1],))
        return x * gamma.astype(x.dtype)


def attention(q, k, v, implementation: str | None = None):
    """softmax(q·kᵀ/√d)·v for (B,N,H,d) inputs, softmax in float32 whatever the compute dtype.

    ``implementation`` (default: by backend): "cudnn" (the fused kernel; GPU, 16-bit inputs),
    "matmul" (batched (B,H,N,d) matmuls: on the CPU ~2x faster than XLA's generic lowering of
    ``jax.nn.dot_product_attention``) or "xla" (``jax.nn.dot_product_attention``; TPU and the rest).
    """
    if implementation is None:
        backend = jax.default_backend()
        if backend == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16):
            implementation = "cudnn"
        else:
            implementation = "matmul" if backend == "cpu" else "xla"
    if implementation in ("cudnn", "xla"):
        return jax.nn.dot_product_attention(q, k, v, implementation=implementation)
    if implementation != "matmul":
        raise ValueError(f"attention: implementation expected cudnn | matmul | xla, found "
                         f"{implementation!r}")
    q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))           # (B,H,N,d)
    logits = (q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)) @ jnp.swapaxes(k, -1, -2)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.swapaxes(weights @ v, 1, 2)                           # (B,N,H,d)


def _dot(x: jax.Array, y: jax.Array, dims) -> jax.Array:
    """``lax.dot_general(x, y, dims)`` in x's dtype. On the CPU, bfloat16 operands ask XLA for a
    float32 result, then round it: the values of a bfloat16 result (XLA accumulates in float32
    either way), but XLA:CPU computes a bfloat16 × bfloat16 → bfloat16 product as a float32 one on
    converted operands, and → float32 with its bfloat16 kernels, about twice as fast on a CPU with
    AVX512-BF16 (docs/DESIGN.md "Performance", session 28). GPUs and TPUs keep the bfloat16 result
    (their kernels accumulate in float32 and round on the way out); float16 is left as it was."""
    if x.dtype == jnp.bfloat16 and jax.default_backend() == "cpu":
        return jax.lax.dot_general(x, y, dims, preferred_element_type=jnp.float32).astype(x.dtype)
    return jax.lax.dot_general(x, y, dims)


def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x (..., Cin) · w (Cin, Cout) by :func:`_dot`."""
    return _dot(x, w, (((x.ndim - 1,), (0,)), ((), ())))


@jax.custom_vjp
def channel_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x (..., Cin) @ w (Cin, Cout) → (..., Cout): a dense layer or a 1×1 convolution. Its weight
    gradient Σ x ⊗ dy over every position is a matmul whose operands both contract their long major
    axis; XLA's CPU backend then transposes one of them in memory, the second, so the narrower of x
    and dy goes second (4x fewer elements moved in an MLP's fc1 or a bottleneck's expanding conv).
    bfloat16 operands accumulate in float32 in the forward and in both gradients (:func:`_dot`)."""
    return _matmul(x, w)


def _channel_matmul_fwd(x, w):
    return _matmul(x, w), (x, w)


def _channel_matmul_bwd(res, dy):
    x, w = res
    cin, cout = w.shape
    x2, dy2 = x.reshape(-1, cin), dy.reshape(-1, cout)
    contract = (((0,), (0,)), ((), ()))
    if cout <= cin:
        dw = _dot(x2, dy2, contract)
    else:
        dw = _dot(dy2, x2, contract).T
    return _matmul(dy, w.T), dw.astype(w.dtype)


channel_matmul.defvjp(_channel_matmul_fwd, _channel_matmul_bwd)


@jax.custom_vjp
def channel_affine(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """x (..., Cin) @ w (Cin, Cout) + b (Cout,) → (..., Cout), with :func:`channel_matmul`'s
    gradients. The bias gradient sums dy as (rows, Cout): left to autodiff, the sum keeps dy's shape
    where a reshape made it, e.g. Swin's (B, nW, N, 3, heads, d) from the q, k, v gradients, and
    XLA's CPU backend rewrites that sum into reduce-windows (~3% of a Swin-T step)."""
    return _matmul(x, w) + b


def _channel_affine_fwd(x, w, b):
    return channel_affine(x, w, b), (x, w)


def _channel_affine_bwd(res, dy):
    dx, dw = _channel_matmul_bwd(res, dy)
    db = dy.reshape(-1, dy.shape[-1]).sum(0, dtype=jnp.float32).astype(dy.dtype)
    return dx, dw, db


channel_affine.defvjp(_channel_affine_fwd, _channel_affine_bwd)


class Dense(nn.Module):
    """``nn.Dense`` (same parameters ``kernel`` (in, out) and ``bias`` (out,), same initialisers and
    rng, same dtype promotion) computed by :func:`channel_matmul` / :func:`channel_affine`:
    (..., in) → (..., features)."""

    features: int
    use_bias: bool = True
    dtype: Any = None
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
        bias = (self.param("bias", self.bias_init, (self.features,), jnp.float32) if self.use_bias
                else None)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return channel_matmul(x, kernel) if bias is None else channel_affine(x, kernel, bias)


class PatchGrid:
    """The patch-token geometry of a ViT-like module with fields ``embed_dim``, ``patch_size`` and
    ``img_size`` (int or (H, W)): a mixin of the ViT and DOFA modules."""

    @property
    def num_features(self) -> int:
        return self.embed_dim

    @property
    def stride(self) -> int:
        """Pixels per patch-token step: the downsampling of the patch-token grid."""
        return self.patch_size

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid of ``img_size``, which ``pos_embed`` covers."""
        size = self.img_size
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        return h // self.patch_size, w // self.patch_size


class Attention(nn.Module):
    """Multi-head self-attention (B,N,D) → (B,N,D); qkv output columns ordered [q | k | v]."""

    num_heads: int
    qkv_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, n, d = x.shape
        if d % self.num_heads:
            raise ValueError(f"attention: embed_dim {d} is not a multiple of num_heads {self.num_heads}")
        qkv = Dense(3 * d, use_bias=self.qkv_bias, dtype=self.dtype, kernel_init=dense_init,
                    name="qkv")(x)
        qkv = qkv.reshape(b, n, 3, self.num_heads, d // self.num_heads)
        y = attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
        return Dense(d, dtype=self.dtype, kernel_init=dense_init, name="proj")(y.reshape(b, n, d))


SQRT_HALF = float(np.sqrt(0.5))


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU x·Φ(x) = x/2 · (1 + erf(x/√2)), elementwise, in x's dtype: torch's
    ``nn.GELU()`` formula. ``jax.nn.gelu(approximate=False)`` writes it with erfc, whose float32
    form XLA evaluates with an exponential where erf's is one polynomial: on the CPU its forward
    takes 2.5× as long and forward + backward 1.6× (docs/DESIGN.md "Performance", session 20)."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * SQRT_HALF))


class Mlp(nn.Module):
    """fc1 → exact (erf) GELU → fc2."""

    hidden_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        y = Dense(self.hidden_dim, dtype=self.dtype, kernel_init=dense_init, name="fc1")(x)
        y = gelu(y)
        return Dense(x.shape[-1], dtype=self.dtype, kernel_init=dense_init, name="fc2")(y)


class Block(nn.Module):
    """Pre-norm transformer block (B,N,D) → (B,N,D) with optional LayerScale and drop path.

    ``stochastic`` is a field (not a call argument) so ``nn.remat(Block)`` needs no static
    argnums. When it is set, drop path (stochastic depth) drops a whole residual branch per sample,
    rescaling the kept ones by 1/(1-rate), using the ``"dropout"`` rng. With ``drop_path_subset``
    and a rate above 0.1 it is DINOv2's ``drop_add_residual_stochastic_depth`` instead: each branch
    runs on ``max(int(B·(1−rate)), 1)`` random samples only and is added to them scaled by
    B / that count (fewer FLOPs; PerA's official blocks).
    """

    num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layerscale_init: float | None = 1e-5
    drop_path: float = 0.0
    stochastic: bool = False
    dtype: Any = jnp.float32
    drop_path_subset: bool = False

    def _residual(self, x, branch, name):
        """x + drop-path(LayerScale(branch(x))): per sample, or on a random subset of the batch."""
        def scaled(y):
            if self.layerscale_init is None:
                return y
            return LayerScale(self.layerscale_init, name=name)(y)

        if not self.stochastic or self.drop_path <= 0.0:
            return x + scaled(branch(x))
        rng = self.make_rng("dropout")
        b = x.shape[0]
        if self.drop_path_subset and self.drop_path > 0.1:
            count = max(int(b * (1.0 - self.drop_path)), 1)
            rows = jax.random.permutation(rng, b)[:count]
            y = scaled(branch(x[rows]))
            return x.at[rows].add(y * jnp.asarray(b / count, y.dtype))
        keep = 1.0 - self.drop_path
        alive = jax.random.bernoulli(rng, keep, (b,) + (1,) * (x.ndim - 1))
        y = scaled(branch(x))
        return x + jnp.where(alive, y / jnp.asarray(keep, y.dtype), jnp.zeros((), y.dtype))

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        norm1 = nn.LayerNorm(LN_EPS, dtype=self.dtype, name="norm1")
        attn = Attention(self.num_heads, self.qkv_bias, self.dtype, name="attn")
        x = self._residual(x, lambda z: attn(norm1(z)), "ls1")
        norm2 = nn.LayerNorm(LN_EPS, dtype=self.dtype, name="norm2")
        mlp = Mlp(int(d * self.mlp_ratio), self.dtype, name="mlp")
        return self._residual(x, lambda z: mlp(norm2(z)), "ls2")


def check_token_options(b: int, n: int, depth: int, keep_idx=None, mask=None,
                        return_layers=(), insert_idx=None,
                        insert_at_block: int | None = None) -> list[int]:
    """Validates a token model's call options for a batch of b images of n patches: mask (B,N),
    keep_idx (B,K), insert_idx (B,L) together with insert_at_block in [0, depth); returns
    ``return_layers`` as non-negative block indices (negative allowed)."""
    if mask is not None and tuple(mask.shape) != (b, n):
        raise ValueError(f"mask: expected shape {(b, n)} (batch, patches), found {tuple(mask.shape)}")
    if keep_idx is not None and (keep_idx.ndim != 2 or keep_idx.shape[0] != b):
        raise ValueError(f"keep_idx: expected shape ({b}, K), found {tuple(keep_idx.shape)}")
    if insert_idx is not None and (insert_idx.ndim != 2 or insert_idx.shape[0] != b):
        raise ValueError(f"insert_idx: expected shape ({b}, L), found {tuple(insert_idx.shape)}")
    if (insert_idx is None) != (insert_at_block is None):
        raise ValueError("insert_idx and insert_at_block go together; found only "
                         + ("insert_idx" if insert_at_block is None else "insert_at_block"))
    if insert_at_block is not None and not 0 <= insert_at_block < depth:
        raise ValueError(f"insert_at_block: expected 0..{depth - 1}, found {insert_at_block}")
    layers = []
    for i in return_layers:
        if not -depth <= i < depth:
            raise ValueError(f"return_layers: expected indices in [-{depth}, {depth}), found {i}")
        layers.append(i % depth)
    return layers


def drop_path_rates(depth: int, rate: float, uniform: bool) -> np.ndarray:
    """(depth,) drop-path rate of each block: timm / DINOv2's linear 0 → ``rate``, or ``rate`` in
    every block with ``uniform`` (PerA)."""
    return np.full(depth, rate) if uniform else np.linspace(0.0, rate, depth)


def positioned_patch_tokens(tokens, pos_table, grid: tuple[int, int], g0: tuple[int, int],
                            rule: str, mask=None, mask_token=None, keep_idx=None):
    """Patch embeddings (B,N,D) of a ``grid`` → (tokens (B,M,D), patch position table (N,D)):
    masked positions replaced by ``mask_token`` (1,D), the (G0h·G0w, D) ``pos_table`` of the stored
    grid ``g0`` added (resized by ``rule`` when the grid differs), then only ``keep_idx`` (B,K)
    kept (M = K or N)."""
    n, d = tokens.shape[1], tokens.shape[2]
    if mask is not None:
        tokens = jnp.where(mask[..., None], mask_token.astype(tokens.dtype)[None], tokens)
    patch_pos = pos_table
    if grid != g0:
        patch_pos = resize_pos_table(pos_table.reshape(*g0, d), grid, rule).reshape(n, d)
    tokens = tokens + patch_pos.astype(tokens.dtype)
    if keep_idx is not None:
        tokens = jnp.take_along_axis(tokens, keep_idx[..., None].astype(jnp.int32), axis=1)
    return tokens, patch_pos


def append_inserted_tokens(x, patch_pos, mask_token, insert_idx):
    """Tokens x (B,T,D) followed by L inserted tokens ``mask_token + patch_pos[insert_idx]``:
    mask_token (1,D), patch position table (N,D), insert_idx (B,L) → (B,T+L,D) (PerA's learn
    positions, appended before block ``insert_at_block``)."""
    pos = jnp.take(patch_pos, insert_idx.astype(jnp.int32), axis=0)
    return jnp.concatenate([x, (mask_token + pos).astype(x.dtype)], axis=1)
