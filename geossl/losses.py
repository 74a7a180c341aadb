"""Pure loss functions of the geossl objectives.

Every function takes arrays, does its arithmetic in float32 whatever the input dtype (bf16 forward
passes included) and returns a float32 scalar. Batch arrays may be global arrays sharded over
devices: only plain ``jnp`` operations are used, so XLA inserts the collectives.

Shapes: B batch, D feature width, K classes or prototypes, N tokens / positions.

Each public function checks its arguments in Python, then calls a jitted core (inlined when the
caller is itself under jit; compiled once per shape when called eagerly).
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp

__all__ = [
    "soft_contrastive_loss",
    "info_nce_loss",
    "dense_info_nce_loss",
    "dino_loss",
    "koleo_loss",
    "masked_l1_loss",
    "cosine_distillation_loss",
]

_HIGHEST = jax.lax.Precision.HIGHEST
# Logit given to excluded positions: finite so that rows with no valid entry keep finite gradients.
_EXCLUDED_LOGIT = -1e9


def _f32(x) -> jax.Array:
    return jnp.asarray(x).astype(jnp.float32)


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps) along the last axis (a zero vector stays zero, gradients stay finite)."""
    sq = jnp.sum(x * x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def _check_ndim(name: str, x, ndim: int, layout: str) -> None:
    if jnp.ndim(x) != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array {layout}, found shape {jnp.shape(x)}")


def _check_same_shape(names: tuple[str, str], a, b) -> None:
    if jnp.shape(a) != jnp.shape(b):
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape, found "
                         f"{jnp.shape(a)} and {jnp.shape(b)}")


def _check_positive(name: str, value) -> None:
    """Validates a concrete temperature; traced values (schedules under jit) pass through."""
    if isinstance(value, numbers.Real) and not value > 0:
        raise ValueError(f"{name}: expected a positive number, found {value!r}")


def _pair_logits(query: jax.Array, key: jax.Array, temperature) -> tuple[jax.Array, jax.Array]:
    """(B,D),(B,D) → cosine matrix ẑ_i·ẑ'_j (B,B) and the logits cosine / τ, both float32."""
    q = _l2_normalize(_f32(query))
    k = _l2_normalize(_f32(key))
    cos = jnp.matmul(q, k.T, precision=_HIGHEST)
    return cos, cos / _f32(temperature)


def _label_similarity(query_labels: jax.Array, key_labels: jax.Array) -> jax.Array:
    """S_ij = cos(y_i, y'_j) (B,B), 0 where either label vector is empty (all zero)."""
    y = _f32(query_labels)
    yk = _f32(key_labels)
    inv_q = _safe_inverse_norm(y)
    inv_k = _safe_inverse_norm(yk)
    return jnp.matmul(y, yk.T, precision=_HIGHEST) * inv_q[:, None] * inv_k[None, :]


def _safe_inverse_norm(y: jax.Array) -> jax.Array:
    norm = jnp.sqrt(jnp.sum(y * y, axis=-1))
    return jnp.where(norm > 0, 1.0 / jnp.where(norm > 0, norm, 1.0), 0.0)


def info_nce_loss(query, key, *, temperature) -> jax.Array:
    """Instance contrast (InfoNCE, MoCo v3 form without its 2τ factor), one direction.

    query, key: (B, D), not yet normalised; row i of ``key`` is the positive of row i of ``query``
    and the other rows are its negatives. Returns mean_i CE(softmax_j(ẑ_i·ẑ'_j / τ), onehot(i)).
    """
    _check_ndim("query", query, 2, "(B, D)")
    _check_same_shape(("query", "key"), query, key)
    _check_positive("temperature", temperature)
    return _info_nce(query, key, temperature)


@jax.jit
def _info_nce(query, key, temperature):
    _, logits = _pair_logits(query, key, temperature)
    return _instance_term(logits)


def _instance_term(logits: jax.Array) -> jax.Array:
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - jnp.diagonal(logits))


def soft_contrastive_loss(query, key, query_labels, key_labels, *, temperature, soft_weight,
                          soft_loss: str = "ce") -> jax.Array:
    """SoftCon loss, one direction (REFERENCE.md §1, geossl's definition).

    The objective symmetrises it over the two views.

    Args:
      query: (B, D) student projections, not yet normalised.
      key: (B, D) teacher projections of the paired views (row i is the positive of query row i).
      query_labels: (B, K) multi-hot {0,1} land-cover labels of the query scenes; an all-zero row
        means "unlabelled".
      key_labels: (B, K) the same for the key scenes.
      temperature: τ of the logits P_ij = ẑ_i·ẑ'_j / τ (a float or a traced scalar).
      soft_weight: λ, weight of the label-guided term (a Python 0 skips computing it).
      soft_loss: "ce" or "mse", the form of the label-guided term.

    Returns L = mean_i CE(softmax_j P_i·, onehot(i)) + λ·L_soft, float32 scalar, with
    S_ij = cos(y_i, y'_j) and S_ij = 0 where either label vector is empty, and

    - "ce": L_soft = −(1/|R|) Σ_{i∈R} Σ_j S̃_ij log softmax_j(P_ij), S̃_ij = S_ij / Σ_j' S_ij'.
      R = rows whose similarity row sums to more than 0: a row is left out when its query is
      unlabelled, when no key is labelled, or when no key shares a class with it (S̃ would be
      undefined). L_soft = 0 when R is empty.
    - "mse": L_soft = (1/(|R|·B)) Σ_{i∈R} Σ_j (ẑ_i·ẑ'_j − S_ij)², on cosines (τ not applied).
      R = rows whose query label vector is non-empty. Every column j counts, so an unlabelled key
      scene is a target of similarity 0 for a labelled query. L_soft = 0 when R is empty.
    """
    if soft_loss not in ("ce", "mse"):
        raise ValueError(f"soft_contrastive_loss: soft_loss must be 'ce' or 'mse', "
                         f"found {soft_loss!r}")
    _check_ndim("query", query, 2, "(B, D)")
    _check_same_shape(("query", "key"), query, key)
    _check_ndim("query_labels", query_labels, 2, "(B, K)")
    _check_same_shape(("query_labels", "key_labels"), query_labels, key_labels)
    if jnp.shape(query_labels)[0] != jnp.shape(query)[0]:
        raise ValueError(f"query_labels: expected {jnp.shape(query)[0]} rows like query "
                         f"{jnp.shape(query)}, found shape {jnp.shape(query_labels)}")
    _check_positive("temperature", temperature)
    with_soft = not (isinstance(soft_weight, numbers.Real) and soft_weight == 0)
    return _soft_contrastive(query, key, query_labels, key_labels, temperature, soft_weight,
                             soft_loss=soft_loss, with_soft=with_soft)


@functools.partial(jax.jit, static_argnames=("soft_loss", "with_soft"))
def _soft_contrastive(query, key, query_labels, key_labels, temperature, soft_weight, *,
                      soft_loss, with_soft):
    cos, logits = _pair_logits(query, key, temperature)
    instance = _instance_term(logits)
    if not with_soft:
        return instance

    sim = _label_similarity(query_labels, key_labels)
    if soft_loss == "ce":
        row_sum = jnp.sum(sim, axis=-1)
        rows = row_sum > 0
        target = sim / jnp.where(rows, row_sum, 1.0)[:, None]
        log_p = jax.nn.log_softmax(logits, axis=-1)
        per_row = -jnp.sum(target * log_p, axis=-1)
    else:
        rows = jnp.any(_f32(query_labels) != 0, axis=-1)
        per_row = jnp.mean(jnp.square(cos - sim), axis=-1)
    count = jnp.sum(rows.astype(jnp.float32))
    soft = jnp.sum(jnp.where(rows, per_row, 0.0)) / jnp.maximum(count, 1.0)
    return instance + _f32(soft_weight) * soft


def dense_info_nce_loss(q, k, valid, *, temperature) -> jax.Array:
    """Dense (per-position) InfoNCE between two views (REFERENCE.md §5, geossl's definition).

    Args:
      q: (B, N, D) query features; k: (B, N, D) key features at the corresponding positions
        (position n of image b in ``q`` and in ``k`` see the same ground location).
      valid: (B, N) bool / {0,1}: the positions where that correspondence exists.
      temperature: τ.

    Each valid position (b, n) is an anchor; its positive is k[b, n] and its negatives are every
    other valid position of every image in the batch. Invalid positions are neither anchors nor
    negatives. Returns the mean over valid anchors of CE(softmax over valid keys, positive); 0
    when no position is valid. Memory is (B·N)² logits.
    """
    _check_ndim("q", q, 3, "(B, N, D)")
    _check_same_shape(("q", "k"), q, k)
    if jnp.shape(valid) != jnp.shape(q)[:2]:
        raise ValueError(f"valid: expected shape {jnp.shape(q)[:2]} (B, N) to match q "
                         f"{jnp.shape(q)}, found {jnp.shape(valid)}")
    _check_positive("temperature", temperature)
    return _dense_info_nce(q, k, valid, temperature)


@jax.jit
def _dense_info_nce(q, k, valid, temperature):
    b, n, d = jnp.shape(q)
    _, logits = _pair_logits(jnp.reshape(q, (b * n, d)), jnp.reshape(k, (b * n, d)), temperature)
    ok = jnp.reshape(jnp.asarray(valid), (b * n,)) != 0
    logits = jnp.where(ok[None, :], logits, _EXCLUDED_LOGIT)
    per_anchor = jax.nn.logsumexp(logits, axis=-1) - jnp.diagonal(logits)
    count = jnp.sum(ok.astype(jnp.float32))
    return jnp.sum(jnp.where(ok, per_anchor, 0.0)) / jnp.maximum(count, 1.0)


def dino_loss(student_logits, teacher_logits, center, *, student_temp, teacher_temp) -> jax.Array:
    """DINO self-distillation cross-entropy (REFERENCE.md §3).

    student_logits, teacher_logits: (B, K) prototype scores of paired crops; center: (K,) or (1, K).
    Returns mean_b −Σ_k softmax((t_b − c)/τ_t)_k · log softmax(s_b/τ_s)_k; the teacher side (and
    the centre) is under stop_gradient.
    """
    _check_ndim("student_logits", student_logits, 2, "(B, K)")
    _check_same_shape(("student_logits", "teacher_logits"), student_logits, teacher_logits)
    k = jnp.shape(student_logits)[1]
    if jnp.shape(center) not in ((k,), (1, k)):
        raise ValueError(f"center: expected shape ({k},) or (1, {k}) for logits "
                         f"{jnp.shape(student_logits)}, found {jnp.shape(center)}")
    _check_positive("student_temp", student_temp)
    _check_positive("teacher_temp", teacher_temp)
    return _dino(student_logits, teacher_logits, center, student_temp, teacher_temp)


@jax.jit
def _dino(student_logits, teacher_logits, center, student_temp, teacher_temp):
    k = jnp.shape(student_logits)[1]
    t = jax.lax.stop_gradient((_f32(teacher_logits) - jnp.reshape(_f32(center), (1, k)))
                              / _f32(teacher_temp))
    target = jax.nn.softmax(t, axis=-1)
    log_p = jax.nn.log_softmax(_f32(student_logits) / _f32(student_temp), axis=-1)
    return jnp.mean(-jnp.sum(target * log_p, axis=-1))


#: torch's ``PairwiseDistance`` default, added to the difference of each pair.
_PAIRWISE_EPS = 1e-8


def koleo_loss(x, *, eps: float = 1e-8) -> jax.Array:
    """KoLeo regulariser (Sablayrolles et al. 2019, as in DINOv2).

    Returns −mean_i log(||x̂_i − x̂_n(i) + 1e-8|| + eps) for x: (B, D), B >= 2, x̂ = x / max(||x||,
    eps), n(i) the nearest other row by cosine similarity (no gradient through the choice). The
    1e-8 added to the difference is torch's ``PairwiseDistance(eps=1e-8)`` of DINOv2's and PerA's
    KoLeo: an exact duplicate is at 1e-8·√D, not 0.
    """
    _check_ndim("x", x, 2, "(B, D)")
    b = jnp.shape(x)[0]
    if b < 2:
        raise ValueError(f"koleo_loss: needs at least 2 rows to find a nearest neighbour, found x "
                         f"of shape {jnp.shape(x)}")
    return _koleo(x, eps)


@jax.jit
def _koleo(x, eps):
    b = jnp.shape(x)[0]
    xn = _l2_normalize(_f32(x), eps)
    sim = jnp.matmul(xn, xn.T, precision=_HIGHEST)
    sim = jnp.where(jnp.eye(b, dtype=bool), -jnp.inf, sim)
    nearest = jax.lax.stop_gradient(jnp.argmax(sim, axis=-1))
    diff = xn - xn[nearest] + _PAIRWISE_EPS
    dist = jnp.sqrt(jnp.maximum(jnp.sum(diff * diff, axis=-1), 1e-30))  # finite gradients at 0
    return -jnp.mean(jnp.log(dist + eps))


def masked_l1_loss(pred, target, mask) -> jax.Array:
    """SimMIM reconstruction loss (REFERENCE.md §4): Σ|pred − target|·M / (ΣM + 1e-5) / C.

    pred, target: (B, H, W, C); mask: (B, H, W) in {0,1} (bool allowed), 1 = masked (reconstructed).
    """
    _check_ndim("pred", pred, 4, "(B, H, W, C)")
    _check_same_shape(("pred", "target"), pred, target)
    if jnp.shape(mask) != jnp.shape(pred)[:3]:
        raise ValueError(f"mask: expected shape {jnp.shape(pred)[:3]} (B, H, W) to match pred "
                         f"{jnp.shape(pred)}, found {jnp.shape(mask)}")
    return _masked_l1(pred, target, mask)


@jax.jit
def _masked_l1(pred, target, mask):
    m = _f32(mask)
    err = jnp.sum(jnp.abs(_f32(pred) - _f32(target)), axis=-1)
    c = jnp.shape(pred)[-1]
    return jnp.sum(err * m) / (jnp.sum(m) + 1e-5) / c


def cosine_distillation_loss(student, teacher) -> jax.Array:
    """GFM feature distillation (REFERENCE.md §4): −mean_b cos(student_b, stop_gradient(teacher_b)).

    student, teacher: (B, D).
    """
    _check_ndim("student", student, 2, "(B, D)")
    _check_same_shape(("student", "teacher"), student, teacher)
    return _cosine_distillation(student, teacher)


@jax.jit
def _cosine_distillation(student, teacher):
    s = _l2_normalize(_f32(student))
    t = _l2_normalize(jax.lax.stop_gradient(_f32(teacher)))
    return -jnp.mean(jnp.sum(s * t, axis=-1))
