"""Random token masks with fixed counts, so every shape is static under jit (REFERENCE.md §6).

One mechanism serves SoftCon's Siamese masking, PerA's disjoint three-way split and SimMIM's unit
masks: per sample, argsort of uniform random noise gives a uniformly random permutation of the
token positions, and consecutive slices of it are the index sets.

Counts from fractions are those of the official code, float arithmetic included: PerA's
``int(round(L · f))`` (:func:`count_for`: Python's round, half to even), MAE's kept tokens
``int(L · (1 − r))`` (:func:`kept_count`: rounded down) and SimMIM's masked units
``ceil(r · U)`` (:func:`ceil_count`).

Token indices are row-major over the patch grid (index = row · grid_w + col), as the ViT flattens.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp

__all__ = [
    "count_for",
    "kept_count",
    "random_split",
    "keep_mask_indices",
    "indices_to_mask",
    "pera_split",
    "ceil_count",
    "unit_mask",
    "simmim_mask",
    "upsample_mask",
]


def _check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"expected a fraction in [0, 1], found {fraction!r}")


def count_for(fraction: float, total: int) -> int:
    """PerA's ``int(round(total · fraction))`` as a Python int (a static count): Python's round,
    half to even (2.5 → 2, 3.5 → 4), on the float product as PerA computes it."""
    _check_fraction(fraction)
    return int(round(total * fraction))


def kept_count(mask_ratio: float, total: int) -> int:
    """MAE's ``int(total · (1 − mask_ratio))``: the tokens a random masking keeps, rounded down
    (196 at 0.9: 19 kept, 177 masked), on the float product as MAE computes it."""
    _check_fraction(mask_ratio)
    return int(total * (1 - mask_ratio))


def ceil_count(fraction: float, total: int) -> int:
    """ceil(total · fraction) as a Python int, in float64 as SimMIM's and GFM's ``MaskGenerator``
    (``int(np.ceil(token_count * mask_ratio))``): 0.6·10 is 6, and 25·0.28 (7.000000000000001
    in float64) is 8 there, so here too."""
    _check_fraction(fraction)
    return int(math.ceil(total * fraction))


def _check_static(name: str, value, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}: expected a Python int >= {minimum} (a static shape), "
                         f"found {value!r}")
    return int(value)


def _permutations(rng, batch: int, num_tokens: int) -> jax.Array:
    """(B, N) int32: row b is a uniformly random permutation of 0..N-1 (argsort of noise).

    The noise is 32 random bits per position, so ties (which argsort would break towards lower
    indices) are ~2⁹ times rarer than with float32 uniforms.
    """
    noise = jax.random.bits(rng, (batch, num_tokens), dtype=jnp.uint32)
    return jnp.argsort(noise, axis=1).astype(jnp.int32)


def random_split(rng, batch: int, num_tokens: int, counts: Sequence[int], *,
                 sort: bool = True) -> tuple[jax.Array, ...]:
    """Disjoint random index sets of fixed sizes, drawn independently per sample.

    Args:
      rng: a jax PRNG key.
      batch, num_tokens: B and N (Python ints).
      counts: sizes c_0, c_1, ... (Python ints) with Σ c_i <= N; positions beyond Σ c_i belong to
        no set.
      sort: return each set in increasing index order (spatial order); False keeps the random
        order of the draw.

    Returns a tuple of (B, c_i) int32 arrays; within a sample the sets never share an index, and
    when Σ c_i = N their union is every position.
    """
    batch = _check_static("batch", batch)
    num_tokens = _check_static("num_tokens", num_tokens)
    counts = tuple(_check_static(f"counts[{i}]", c) for i, c in enumerate(counts))
    if sum(counts) > num_tokens:
        raise ValueError(f"counts {counts} sum to {sum(counts)}, more than num_tokens={num_tokens}")
    return _split(rng, batch, num_tokens, counts, bool(sort))


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _split(rng, batch, num_tokens, counts, sort):
    perm = _permutations(rng, batch, num_tokens)
    out = []
    start = 0
    for c in counts:
        idx = perm[:, start:start + c]
        out.append(jnp.sort(idx, axis=1) if sort else idx)
        start += c
    return tuple(out)


def keep_mask_indices(rng, batch: int, num_tokens: int, mask_ratio: float, *,
                      sort: bool = True) -> tuple[jax.Array, jax.Array]:
    """Random patch masking: ``(keep_idx (B, K), mask_idx (B, N−K))`` int32, disjoint, covering.

    K = kept_count(mask_ratio, N) positions are kept (MAE's ``int(N · (1 − r))``), N − K masked.
    """
    num_tokens = _check_static("num_tokens", num_tokens)
    kept = kept_count(mask_ratio, num_tokens)
    return random_split(rng, batch, num_tokens, (kept, num_tokens - kept), sort=sort)


def indices_to_mask(idx, num_tokens: int) -> jax.Array:
    """(B, M) int indices → (B, N) bool, True at the listed positions of each row."""
    if jnp.ndim(idx) != 2:
        raise ValueError(f"idx: expected a 2-D array (B, M), found shape {jnp.shape(idx)}")
    num_tokens = _check_static("num_tokens", num_tokens)
    return _to_mask(idx, num_tokens)


@functools.partial(jax.jit, static_argnums=(1,))
def _to_mask(idx, num_tokens):
    b = jnp.shape(idx)[0]
    rows = jnp.arange(b, dtype=jnp.int32)[:, None]
    return jnp.zeros((b, num_tokens), dtype=bool).at[rows, idx].set(True)


def pera_split(rng, batch: int, num_tokens: int, student: float = 0.2, learn: float = 0.4, *,
               sort: bool = True) -> tuple[jax.Array, jax.Array, jax.Array]:
    """PerA's disjoint masks from one permutation per sample (REFERENCE.md §3).

    ``learn`` is the cumulative fraction student + learn, as in PerA (1 − teacher ratio).
    Returns ``(student_idx (B, S), learn_idx (B, L), teacher_idx (B, T))`` int32 with
    S = count_for(student, N), L = count_for(learn, N) − S and T = N − S − L: the student sees S
    positions, mask tokens stand at the L learn positions, the teacher sees the rest. The three sets
    are disjoint and cover all N. For local crops PerA uses the student and teacher sets only (the
    learn positions are then seen by nobody).
    """
    num_tokens = _check_static("num_tokens", num_tokens)
    if not 0.0 <= student <= learn <= 1.0:
        raise ValueError(f"pera_split: expected 0 <= student <= learn <= 1, found "
                         f"student={student!r}, learn={learn!r}")
    s = count_for(student, num_tokens)
    sl = count_for(learn, num_tokens)
    return random_split(rng, batch, num_tokens, (s, sl - s, num_tokens - sl), sort=sort)


def unit_mask(rng, batch: int, grid: tuple[int, int], ratio: float) -> jax.Array:
    """(B, gh, gw) bool over mask units, exactly ``ceil_count(ratio, gh·gw)`` True per sample (SimMIM),
    drawn independently per sample."""
    gh, gw = (_check_static(f"grid[{i}]", g, 1) for i, g in enumerate(grid))
    n = gh * gw
    (masked,) = random_split(rng, batch, n, (ceil_count(ratio, n),))
    return indices_to_mask(masked, n).reshape(batch, gh, gw)


def simmim_mask(rng, batch: int, grid: tuple[int, int], unit: int, ratio: float) -> jax.Array:
    """SimMIM mask over a patch grid (REFERENCE.md §4): (B, gh, gw) bool, True = masked.

    The grid is tiled by square mask units of ``unit`` × ``unit`` patches (e.g. 32 px units with
    16 px patches: unit=2); exactly ceil(ratio·U) of the U = (gh/unit)·(gw/unit) units are masked
    per sample (:func:`unit_mask`), then the unit mask is upsampled to patches.
    """
    if len(grid) != 2:
        raise ValueError(f"grid: expected (gh, gw), found {grid!r}")
    gh, gw = (_check_static(f"grid[{i}]", g, 1) for i, g in enumerate(grid))
    unit = _check_static("unit", unit, 1)
    if gh % unit or gw % unit:
        raise ValueError(f"simmim_mask: grid {(gh, gw)} is not divisible by the mask unit {unit}")
    return upsample_mask(unit_mask(rng, batch, (gh // unit, gw // unit), ratio), unit)


def upsample_mask(mask, factor: int | tuple[int, int]) -> jax.Array:
    """(B, h, w) → (B, h·fh, w·fw) by repeating each cell (patch mask → pixel mask).

    ``factor`` is an int or (fh, fw).
    """
    if jnp.ndim(mask) != 3:
        raise ValueError(f"mask: expected a 3-D array (B, h, w), found shape {jnp.shape(mask)}")
    fh, fw = (factor, factor) if isinstance(factor, numbers.Integral) else tuple(factor)
    fh, fw = _check_static("factor", fh, 1), _check_static("factor", fw, 1)
    mask = jnp.asarray(mask)
    return jnp.repeat(jnp.repeat(mask, fh, axis=1), fw, axis=2)
