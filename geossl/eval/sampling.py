"""Seeded, stratified label-fraction subsets of the probe-train examples (PANGAEA's limited-label
protocol draws them stratified).

``stratified_subset(labels, fraction, seed)`` → sorted positions into ``labels``:
- single-label data (labels (N,) class ids): per class c of n_c examples, the first
  ``max(1, round(fraction · n_c))`` of a seeded permutation of its examples: every present class
  keeps at least one example, so the subset holds ``≈ round(fraction · N)`` examples, a few more
  at tiny fractions;
- multi-label data (labels (N, K) multi-hot): the first ``max(1, round(fraction · N))`` examples of
  :func:`stratified_order`, an iterative stratification in the manner of Sechidis et al. (2011):
  labels are visited rarest first, and each label's examples are spread evenly over the order;
- ``labels=None``: the first ``max(1, round(fraction · N))`` of a seeded permutation.

Same seed and pool → same subset. Nested: for one seed and pool, a smaller fraction's subset is
contained in a larger one's (every rule takes prefixes of orders that do not depend on the
fraction).
"""

from __future__ import annotations

import numpy as np


def subset_size(fraction: float, n: int) -> int:
    """``max(1, round(fraction · n))`` for n ≥ 1 (Python's round: halves to even)."""
    return max(1, int(round(fraction * n)))


def _spread(existing_keys: np.ndarray, count: int, theta: float) -> np.ndarray:
    """The free slots of a grid of ``count`` keys ``(j + theta) / count`` (ascending ints j) once
    each of ``existing_keys`` (in [0, 1)) has claimed, in order, the first unclaimed slot at or
    after it (the last ones pushed down when slots run out)."""
    keys = np.sort(np.asarray(existing_keys, np.float64))
    taken = len(keys)
    if taken == 0:
        return np.arange(count)
    position = np.arange(taken)
    first_at_or_after = np.ceil(keys * count - theta).astype(np.int64)
    slots = position + np.maximum.accumulate(first_at_or_after - position)  # strictly increasing
    slots = np.minimum(slots, count - taken + position)                    # room for the rest
    return np.setdiff1d(np.arange(count), slots, assume_unique=True)


def stratified_order(labels, seed: int) -> np.ndarray:
    """An order (N,) of the rows of multi-hot ``labels`` (N, K) whose every prefix keeps each
    class's share close to its share in all N rows.

    Each row gets a key in [0, 1); the order sorts by key. Classes are visited rarest first (fewest
    rows still without a key; the lower class id on ties). Class c's n_c rows are meant to sit at
    ``(j + θ_c) / n_c``, j < n_c, θ_c seeded uniform: rows already keyed by rarer classes claim
    these slots in key order (:func:`_spread`), and the class's unkeyed rows take the free slots in
    seeded random order. Rows without labels are spread the same way, last."""
    labels = np.asarray(labels) > 0
    if labels.ndim != 2:
        raise ValueError(f"stratified_order: expected multi-hot labels (N, K), found "
                         f"{labels.shape}")
    n = labels.shape[0]
    rng = np.random.default_rng(seed)
    keys = np.zeros(n, np.float64)
    keyed = np.zeros(n, bool)
    while True:
        waiting = np.sum(labels & ~keyed[:, None], axis=0)
        if not waiting.any():
            break
        label = int(np.argmin(np.where(waiting > 0, waiting, n + 1)))
        members = np.flatnonzero(labels[:, label])
        new = members[~keyed[members]]
        theta = rng.random()
        free = _spread(keys[members[keyed[members]]], len(members), theta)
        keys[rng.permutation(new)] = (free + theta) / len(members)
        keyed[new] = True
    rest = np.flatnonzero(~keyed)
    if len(rest):
        theta = rng.random()
        keys[rng.permutation(rest)] = (np.arange(len(rest)) + theta) / len(rest)
    return np.argsort(keys, kind="stable")


def stratified_subset(labels, fraction: float, seed: int) -> np.ndarray:
    """Sorted positions of a seeded ``fraction`` of the N examples (see the module docstring).

    ``labels``: (N,) class ids (single-label), (N, K) multi-hot (multi-label), or None."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label_fraction: expected a fraction in (0, 1], found {fraction}")
    if labels is None:
        raise ValueError("stratified_subset: no labels; use random_subset")
    labels = np.asarray(labels)
    n = len(labels)
    if n == 0:
        raise ValueError("label_fraction of an empty set of examples")
    if fraction == 1:
        return np.arange(n)
    if labels.ndim == 2:
        return np.sort(stratified_order(labels, seed)[:subset_size(fraction, n)])
    if labels.ndim != 1:
        raise ValueError(f"stratified_subset: expected labels (N,) or (N, K), found {labels.shape}")
    rng = np.random.default_rng(seed)
    picked = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        picked.append(members[:subset_size(fraction, len(members))])
    return np.sort(np.concatenate(picked))


def random_subset(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted positions: the first ``max(1, round(fraction · n))`` of a seeded permutation."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label_fraction: expected a fraction in (0, 1], found {fraction}")
    if n == 0:
        raise ValueError("label_fraction of an empty set of examples")
    return np.sort(np.random.default_rng(seed).permutation(n)[:subset_size(fraction, n)])
